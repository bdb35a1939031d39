"""SQLAlchemy model of an open enrolment challenge (single use, short TTL)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime


class EnrollmentChallenge(Base):
    """State between /v1/enroll/begin and /v1/enroll/finish; deleted on finish or expiry.

    ``secret`` is the credential secret made for the device's EK; it lives here only
    for the challenge TTL (docs/adr/0008-provisioning.md, Consequences).
    """

    __tablename__ = "enrollment_challenges"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    provisioning_key_id: Mapped[str] = mapped_column(
        ForeignKey("provisioning_keys.id", ondelete="CASCADE"), index=True
    )
    fleet_id: Mapped[str] = mapped_column(String(32))
    serial: Mapped[str] = mapped_column(String(128))
    ek_hash: Mapped[str] = mapped_column(String(64))
    key_public: Mapped[bytes] = mapped_column(LargeBinary)
    csr_pem: Mapped[str] = mapped_column(Text)
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    #: the fleet EK policy the evidence met at begin (certified | allow-list | any)
    ek_trust: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: the AK the credential was made for (recorded on the device at finish)
    ak_public: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
