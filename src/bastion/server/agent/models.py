"""SQLAlchemy models of request-signature nonces and device presence (heartbeats)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Integer, PrimaryKeyConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime


class DeviceRequestNonce(Base):
    """A nonce of a verified device request signature, kept while a replay could pass.

    The key leads with the nonce: the agent's nonces begin with their time, so new rows
    go to the key's end (migration 0027, ADR 0050)."""

    __tablename__ = "device_request_nonces"
    __table_args__ = (PrimaryKeyConstraint("nonce", "device_id"),)

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    nonce: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)


class DevicePresence(Base):
    """What the agent last said about itself, and whether its channel is open."""

    __tablename__ = "device_presence"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    os_version: Mapped[str | None] = mapped_column(String(256), nullable=True)
    slot: Mapped[str | None] = mapped_column(String(16), nullable=True)
    uptime_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    log_backlog: Mapped[int | None] = mapped_column(Integer, nullable=True)
    connected: Mapped[bool] = mapped_column(Boolean, default=False)
    connected_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
