"""SQLAlchemy models of releases: published bundles, the fleet's keyring and target."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime, new_id


class ReleaseSource:
    """Values of :attr:`Release.source`."""

    STORE = "store"  # uploaded, verified against the fleet keyring, kept in the file store
    URL = "url"  # registered external HTTP/CDN URL (length and sha256 declared)


class Release(Base):
    """One release of a fleet: a bundle in the file store or at an external URL."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("fleet_id", "version", name="uq_releases_fleet_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    fleet_id: Mapped[str] = mapped_column(ForeignKey("fleets.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(128))
    compatible: Mapped[str] = mapped_column(String(256))
    svn: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the signed manifest (RAUC .raucm text) of a stored bundle
    manifest: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: subject of the certificate that signed a stored bundle
    signer: Mapped[str | None] = mapped_column(String(512), nullable=True)
    #: signed golden-values statement of this release (verified with the product key)
    golden_statement: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: JSON {"<pcr>": "<hex>"} of the golden statement (sha256 bank)
    golden_pcrs: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class ReleaseKeyring(Base):
    """The PEM certificates a fleet's uploaded bundles must chain to (RAUC keyring)."""

    __tablename__ = "release_keyrings"

    fleet_id: Mapped[str] = mapped_column(
        ForeignKey("fleets.id", ondelete="CASCADE"), primary_key=True
    )
    keyring: Mapped[str] = mapped_column(Text)
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class FleetTarget(Base):
    """The release every device of the fleet runs outside a rollout."""

    __tablename__ = "fleet_targets"

    fleet_id: Mapped[str] = mapped_column(
        ForeignKey("fleets.id", ondelete="CASCADE"), primary_key=True
    )
    release_id: Mapped[str] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), index=True
    )
    set_by: Mapped[str] = mapped_column(String(128))
    set_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class TufRenewal(Base):
    """The lease on the server's TUF renewal (one row per repository): of several server
    processes, the one whose conditional update moved ``lease_until`` renews (ADR 0037)."""

    __tablename__ = "tuf_renewal"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    #: when this repository's snapshot or timestamp was last re-signed by a server
    renewed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
