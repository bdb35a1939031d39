"""SQLAlchemy models of OIDC sign-in: linked identities and started sign-ins.

:class:`OidcIdentity` links one provider subject (``issuer`` + ``sub``) to one user;
once linked, the subject decides who signs in, not the e-mail address.
:class:`OidcLogin` is one started sign-in: the state (stored as its SHA-256), the
nonce, the PKCE verifier, the hash of the browser-binding cookie, and, after a good
ID token for a user with TOTP, the hash of the single-use second-factor ticket.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id


class OidcIdentity(Base):
    """A provider subject linked to a user (one per user and issuer)."""

    __tablename__ = "oidc_identities"
    __table_args__ = (
        UniqueConstraint("issuer", "subject", name="uq_oidc_identities_issuer_subject"),
        UniqueConstraint("user_id", "issuer", name="uq_oidc_identities_user_id_issuer"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    #: the verified e-mail address the link was made through (history, not a key)
    email: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class OidcLogin(Base):
    """One started sign-in; ``used_at``/``ticket_used_at`` make each step single-use."""

    __tablename__ = "oidc_logins"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(Text)
    browser_hash: Mapped[str] = mapped_column(String(64))
    redirect_uri: Mapped[str] = mapped_column(String(512))
    client: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: set when the ID token was good but the user must still give a second factor
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    ticket_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    ticket_expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    ticket_used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
