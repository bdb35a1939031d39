"""SQLAlchemy model of provisioning keys (one fleet each; stored as a SHA-256 only)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id


class ProvisioningKey(Base):
    """A bearer key that can do nothing but enrol devices into one fleet."""

    __tablename__ = "provisioning_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    fleet_id: Mapped[str] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    rate_per_minute: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: JSON arrays of device serials and lowercase hex sha256(EK TPM2B_PUBLIC)
    allow_serials: Mapped[str] = mapped_column(Text, default="[]")
    allow_ek_hashes: Mapped[str] = mapped_column(Text, default="[]")
    #: JSON array of [serial, ek sha256] pairs: a device must match both of one entry
    allow_devices: Mapped[str] = mapped_column(Text, default="[]")
