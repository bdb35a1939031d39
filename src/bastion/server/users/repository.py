"""Queries over users, their tokens and recovery codes (no commits)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bastion.server.users.models import RecoveryCode, User, UserToken


def get_user(session: Session, user_id: str) -> User | None:
    return session.get(User, user_id)


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.execute(select(User).where(User.email == email)).scalar_one_or_none()


def get_token_by_hash(session: Session, digest: str) -> UserToken | None:
    return session.execute(
        select(UserToken).where(UserToken.token_hash == digest)
    ).scalar_one_or_none()


def get_token(session: Session, user_id: str, token_id: str) -> UserToken | None:
    token = session.get(UserToken, token_id)
    return token if token is not None and token.user_id == user_id else None


def list_tokens(session: Session, user_id: str, kind: str) -> list[UserToken]:
    return list(
        session.execute(
            select(UserToken)
            .where(UserToken.user_id == user_id, UserToken.kind == kind)
            .order_by(UserToken.created_at)
        ).scalars()
    )


def unused_recovery_codes(session: Session, user_id: str) -> list[RecoveryCode]:
    return list(
        session.execute(
            select(RecoveryCode).where(
                RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)
            )
        ).scalars()
    )


def delete_recovery_codes(session: Session, user_id: str) -> None:
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
