"""SQLAlchemy model of a command queued for a device (ADR 0033)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id


class CommandStatus:
    """Values of :attr:`DeviceCommand.status`; the last four are final."""

    QUEUED = "queued"
    SENT = "sent"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    OPEN = (QUEUED, SENT)


class DeviceCommand(Base):
    """One operator command for one device: queued, sent, then a result or expiry."""

    __tablename__ = "device_commands"
    __table_args__ = (Index("ix_device_commands_device_id_status", "device_id", "status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    fleet_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    args: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=CommandStatus.QUEUED)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
