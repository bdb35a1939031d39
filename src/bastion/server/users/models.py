"""SQLAlchemy models of the users feature: users, their tokens and recovery codes.

``UserToken`` holds both login sessions (``kind="session"``, prefix ``bst_ses_``) and
personal API tokens (``kind="pat"``, prefix ``bst_pat_``). Only the SHA-256 of a token
is stored; the token itself is shown once. Recovery codes are stored the same way.
``UsedTotpStep`` makes each TOTP time step single-use per user even for logins that
run at the same time: its primary key refuses a second row for the same step.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id


class User(Base):
    """A human operator account."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the TOTP secret sealed with the server's secret key (:mod:`bastion.server.secrets`)
    totp_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: last TOTP time step accepted; a code for this step or earlier is a replay
    totp_last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)


class UserToken(Base):
    """A session or personal API token; only its hash is stored."""

    __tablename__ = "user_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(32))
    scopes: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: True when the login that made this session passed a second factor
    two_factor: Mapped[bool] = mapped_column(Boolean, default=False)
    #: how the login behind this token was made: ``password`` or ``oidc``
    auth_method: Mapped[str] = mapped_column(String(16), default="password")


class RecoveryCode(Base):
    """A single-use TOTP recovery code; only its hash is stored."""

    __tablename__ = "recovery_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class UsedTotpStep(Base):
    """A TOTP time step a user has spent; the primary key makes it single-use."""

    __tablename__ = "used_totp_steps"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    used_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
