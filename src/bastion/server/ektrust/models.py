"""SQLAlchemy models of a fleet's EK CA trust store and its deny-list of revoked EKs."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id


class FleetEkCa(Base):
    """A TPM manufacturer CA certificate the fleet trusts to certify EKs."""

    __tablename__ = "fleet_ek_cas"
    __table_args__ = (UniqueConstraint("fleet_id", "sha256", name="uq_fleet_ek_cas_fleet_sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    fleet_id: Mapped[str] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    certificate: Mapped[str] = mapped_column(Text)
    added_by: Mapped[str] = mapped_column(String(128))
    added_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class DeniedEk(Base):
    """An EK (by SHA-256 of its TPM2B_PUBLIC) that may not enrol into the fleet.

    Written when a device is revoked (or by an operator); not tied to the device row,
    so it survives the device's deletion until an operator lifts it.
    """

    __tablename__ = "ek_denylist"

    fleet_id: Mapped[str] = mapped_column(
        ForeignKey("fleets.id", ondelete="CASCADE"), primary_key=True
    )
    ek_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(256))
    device_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
