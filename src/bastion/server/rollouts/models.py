"""SQLAlchemy models of rollouts, their waves and devices, signed reports, nonces, tags."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id


class RolloutState:
    """Values of :attr:`Rollout.state`."""

    RUNNING = "running"
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"
    ACTIVE = (RUNNING, PAUSED)


class DeviceResult:
    """Values of :attr:`RolloutDevice.result`: ``pending`` or a report's result."""

    PENDING = "pending"
    INSTALLED = "installed"
    COMMITTED = "committed"
    FELL_BACK = "fell_back"
    FAILED = "failed"
    ALL = (PENDING, INSTALLED, COMMITTED, FELL_BACK, FAILED)
    BAD = (FELL_BACK, FAILED)


class Rollout(Base):
    """A release rolled out to a fleet wave by wave."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    fleet_id: Mapped[str] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16))
    #: waves 0..active_wave are open: their devices are given the release
    active_wave: Mapped[int] = mapped_column(Integer, default=0)
    paused_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class RolloutWave(Base):
    """One wave: which devices (percentage, tag or list) and its thresholds."""

    __tablename__ = "rollout_waves"

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    canary: Mapped[bool] = mapped_column(Boolean, default=False)
    percent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: JSON list of device ids
    devices: Mapped[str | None] = mapped_column(Text, nullable=True)
    success_percent: Mapped[int] = mapped_column(Integer)
    failure_percent: Mapped[int] = mapped_column(Integer)
    #: failures an operator accepted by resuming (they no longer count toward a pause)
    acknowledged_failures: Mapped[int] = mapped_column(Integer, default=0)


class RolloutDevice(Base):
    """A device's wave in a rollout and the result of its newest verified report."""

    __tablename__ = "rollout_devices"
    __table_args__ = (Index("ix_rollout_devices_rollout_wave", "rollout_id", "wave", "result"),)

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    wave: Mapped[int] = mapped_column(Integer)
    result: Mapped[str] = mapped_column(String(16), default=DeviceResult.PENDING)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    reported_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class UpdateReportNonce(Base):
    """An open single-use nonce for one update report."""

    __tablename__ = "update_report_nonces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)


class UpdateReport(Base):
    """One verified signed report (history kept): the server's truth about a device."""

    __tablename__ = "update_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    fleet_id: Mapped[str] = mapped_column(String(32), index=True)
    rollout_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    version: Mapped[str] = mapped_column(String(128))
    slot: Mapped[str] = mapped_column(String(16))
    svn: Mapped[int] = mapped_column(BigInteger)
    result: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    tpm_clock: Mapped[int] = mapped_column(BigInteger)
    #: the signed report exactly as received (re-verifiable with the device's key)
    signed: Mapped[bytes] = mapped_column(LargeBinary)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class DeviceTag(Base):
    """A label an operator put on a device (rollout waves select by tag)."""

    __tablename__ = "device_tags"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
