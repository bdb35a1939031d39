"""SQLAlchemy models of devices, their env overrides, logs/events and revoked certificates."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id


class DeviceStatus:
    """Values of :attr:`Device.status`."""

    ACTIVE = "active"
    REVOKED = "revoked"


class Device(Base):
    """An enrolled device: its TPM-bound identity and the few fields it may update."""

    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_fleet_id_serial", "fleet_id", "serial"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    fleet_id: Mapped[str] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    serial: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default=DeviceStatus.ACTIVE)
    ek_hash: Mapped[str] = mapped_column(String(64), index=True)
    key_public: Mapped[bytes] = mapped_column(LargeBinary)
    cert_serial: Mapped[str] = mapped_column(String(64))
    cert_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    certificate: Mapped[str] = mapped_column(Text)
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    api_key_prefix: Mapped[str] = mapped_column(String(16))
    provisioning_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("provisioning_keys.id", ondelete="SET NULL"), nullable=True
    )
    os_version: Mapped[str | None] = mapped_column(String(256), nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(256), nullable=True)
    note: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: how the EK was trusted at enrolment: certified | allow-list | any
    ek_trust: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: TPM2B_PUBLIC of the AK credential activation bound to the EK at enrolment: the
    #: only key whose quotes attest this device (NULL: enrolled before attestation)
    ak_public: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class DeviceEnvVar(Base):
    """A per-device environment variable overriding the fleet's value of the same name."""

    __tablename__ = "device_env"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DeviceRecord(Base):
    """One log line (``kind="log"``) or event (``kind="event"``) written by a device."""

    __tablename__ = "device_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    body: Mapped[str] = mapped_column(Text)
    #: UTF-8 bytes of ``body``, summed for the per-device byte quota
    size: Mapped[int] = mapped_column(Integer, default=0)


class RevokedCertificate(Base):
    """A device certificate on the CRL; kept after the device row is deleted."""

    __tablename__ = "revoked_certificates"

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(32), index=True)
    fleet_id: Mapped[str] = mapped_column(String(32), index=True)
    revoked_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    reason: Mapped[str] = mapped_column(String(32))
