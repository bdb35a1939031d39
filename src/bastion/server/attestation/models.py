"""SQLAlchemy models of attestation: fleet settings, golden statements, nonces, verdicts."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id

#: the PCRs a fleet quotes unless it says otherwise: the EFI chain's firmware (0, a known
#: value per firmware build), boot loader and UKI (4), Secure Boot (7), the stub's
#: command line and initrd (9) and the UKI with its phases (11); docs/attestation.md
DEFAULT_SELECTION = "sha256:0,4,7,9,11"
DEFAULT_INTERVAL = 3600


class FleetAttestation(Base):
    """A fleet's attestation settings; a fleet without a row has the defaults."""

    __tablename__ = "fleet_attestation"

    fleet_id: Mapped[str] = mapped_column(
        ForeignKey("fleets.id", ondelete="CASCADE"), primary_key=True
    )
    #: refuse config/target release/secrets without a fresh passing verdict (when the
    #: fleet has golden values: docs/adr/0023-attestation.md)
    gating: Mapped[bool] = mapped_column(Boolean, default=True)
    interval_seconds: Mapped[int] = mapped_column(Integer, default=DEFAULT_INTERVAL)
    svn_floor: Mapped[int] = mapped_column(BigInteger, default=0)
    pcr_selection: Mapped[str] = mapped_column(String(64), default=DEFAULT_SELECTION)
    posture_policy: Mapped[str] = mapped_column(Text, default="{}")
    #: PEM public key golden statements must be signed with (the product's image key)
    product_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class FleetGolden(Base):
    """One signed golden-values statement (an accepted release) of a fleet."""

    __tablename__ = "fleet_golden"
    __table_args__ = (UniqueConstraint("fleet_id", "sha256", name="uq_fleet_golden_fleet_sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    fleet_id: Mapped[str] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    security_version: Mapped[int] = mapped_column(BigInteger)
    statement: Mapped[bytes] = mapped_column(LargeBinary)
    added_by: Mapped[str] = mapped_column(String(128))
    added_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class AttestationNonce(Base):
    """An open challenge: single use, expires."""

    __tablename__ = "attestation_nonces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)


class AttestationVerdict(Base):
    """One verdict; the history is kept (newest decides gating)."""

    __tablename__ = "attestation_verdicts"
    #: a device's newest verdict (the gate's max(id)) from the index's end (0025)
    __table_args__ = (Index("ix_attestation_verdicts_device_latest", "device_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    fleet_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    #: JSON list of {"id", "detail"}
    failures: Mapped[str] = mapped_column(Text, default="[]")
    release: Mapped[str | None] = mapped_column(String(128), nullable=True)
    security_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    clock: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reset_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    restart_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: the TCG event log judged (the device's newest verdict only; older ones: NULL)
    eventlog: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
