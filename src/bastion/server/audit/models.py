"""SQLAlchemy models of the audit log: the entries and the single chain head row.

``AuditHead`` (one row, ``id=1``) holds the sequence number and hash of the last entry;
appending locks it (``SELECT ... FOR UPDATE`` on PostgreSQL, the write lock on SQLite),
so entries are strictly ordered even with concurrent writers.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bastion.server.db.base import Base, UtcDateTime


class AuditEntry(Base):
    """One audit event; ``hash`` covers every other column and ``prev_hash``."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    actor: Mapped[str] = mapped_column(String(160))
    event: Mapped[str] = mapped_column(String(64), index=True)
    org_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: MAC or signature by the audit key (chain.entry_mac_input); NULL only before sealing
    mac: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditHead(Base):
    """The chain head: last sequence number and hash."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    #: random id given when the chain is sealed; bound into every MAC and checkpoint
    server_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: MAC by the audit key over (server_id, seq, hash)
    mac: Mapped[str | None] = mapped_column(Text, nullable=True)
