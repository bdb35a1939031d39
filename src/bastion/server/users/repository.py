"""Queries over users, their tokens and recovery codes (no commits)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bastion.server.users.models import RecoveryCode, UsedTotpStep, User, UserToken


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


def spend_recovery_code(session: Session, code_id: str, now: dt.datetime) -> bool:
    """Mark one recovery code used; False when another transaction used it first.

    A single conditional UPDATE: on PostgreSQL a concurrent one waits on the row lock
    and then finds ``used_at`` set; on SQLite writers are serialised.
    """
    result = session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.id == code_id, RecoveryCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


def spend_totp_step(session: Session, user_id: str, step: int, now: dt.datetime) -> bool:
    """Record ``step`` as used by ``user_id``; False when it was already recorded.

    The insert runs in a savepoint so a refused duplicate leaves the transaction usable.
    On PostgreSQL a concurrent insert of the same key waits for the first transaction
    and fails once it commits.
    """
    try:
        with session.begin_nested():
            session.add(UsedTotpStep(user_id=user_id, step=step, used_at=now))
    except IntegrityError:
        return False
    return True


def forget_totp_steps(session: Session, user_id: str, before: int | None = None) -> None:
    """Drop the user's used steps (all, or those older than ``before``)."""
    query = delete(UsedTotpStep).where(UsedTotpStep.user_id == user_id)
    if before is not None:
        query = query.where(UsedTotpStep.step < before)
    session.execute(query)
