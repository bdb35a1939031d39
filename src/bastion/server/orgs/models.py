"""SQLAlchemy models of organisations, fleets, memberships and fleet variables.

An organisation has members (``owner`` or ``member``); an organisation owner is owner
of every fleet in it. A fleet has members with one role each (:class:`Role`). Fleet
configuration is a JSON object; environment variables are name/value rows. Devices and
their per-device overrides belong to the devices feature. Nobody becomes a member
without consent: an owner creates an :class:`OrgInvitation` for an e-mail address and
its holder accepts or declines it.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id


class Organisation(Base):
    """A tenant: users, fleets and everything under them."""

    __tablename__ = "organisations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    require_2fa: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    #: members act here only with a login made through OIDC (docs/adr/0021-oidc-sign-in.md)
    require_oidc: Mapped[bool] = mapped_column(Boolean, default=False)


class OrgMember(Base):
    """Membership of a user in an organisation (``owner`` or ``member``)."""

    __tablename__ = "org_members"

    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))


class Fleet(Base):
    """A group of devices sharing configuration, releases and provisioning keys."""

    __tablename__ = "fleets"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_fleets_org_id_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128))
    config: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    #: how enrolment must prove TPM hardware: certified | allow-list | any (development)
    ek_policy: Mapped[str] = mapped_column(String(16), default="certified")


class FleetMember(Base):
    """A user's role in one fleet."""

    __tablename__ = "fleet_members"

    fleet_id: Mapped[str] = mapped_column(
        ForeignKey("fleets.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))


class FleetEnvVar(Base):
    """One fleet-wide environment variable handed to the fleet's devices."""

    __tablename__ = "fleet_env"

    fleet_id: Mapped[str] = mapped_column(
        ForeignKey("fleets.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class InvitationState(StrEnum):
    """Where an invitation stands; only ``pending`` ones can be answered or revoked."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    REVOKED = "revoked"


class OrgInvitation(Base):
    """An owner's offer of membership to whoever holds ``email``."""

    __tablename__ = "org_invitations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(254), index=True)
    role: Mapped[str] = mapped_column(String(16))
    #: the inviting user's id (kept after they leave: it is history, not a reference)
    invited_by: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=InvitationState.PENDING.value)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    answered_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
