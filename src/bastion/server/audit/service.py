"""The audit API: append a chained entry, and verify the whole chain.

Every entry's ``hash`` is SHA-256 over a canonical JSON encoding of its sequence
number, time, actor, event, organisation, details and the previous entry's hash. The
chain starts from 64 zeros. :func:`verify_chain` recomputes every link and raises
:class:`~bastion.errors.TamperError` (``stage="audit"``) naming the first entry that
was edited, removed (a gap in sequence numbers or a broken ``prev_hash`` link),
reordered, or truncated from the end (the head row disagrees with the last entry).

Call :func:`record` inside the caller's transaction so the audit entry commits or
rolls back with the change it describes::

    from bastion.server.audit.service import record
    record(session, "device.revoke", principal.actor, {"device": dev.id}, org_id=org.id)
    session.commit()
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bastion.errors import TamperError
from bastion.server.audit.models import AuditEntry, AuditHead

GENESIS = "0" * 64
_VERIFY_BATCH = 1000


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(
    *,
    seq: int,
    at: dt.datetime,
    actor: str,
    event: str,
    org_id: str | None,
    details: str,
    prev: str,
) -> str:
    """The SHA-256 (hex) that chains one entry to ``prev``."""
    body = canonical(
        {
            "seq": seq,
            "at": at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": actor,
            "event": event,
            "org": org_id,
            "details": details,
            "prev": prev,
        }
    )
    return hashlib.sha256(body.encode()).hexdigest()


def record(
    session: Session,
    event: str,
    actor: str,
    details: Mapping[str, Any] | None = None,
    *,
    org_id: str | None = None,
    at: dt.datetime | None = None,
) -> AuditEntry:
    """Append one entry to the chain in the caller's transaction (not committed here).

    ``event`` is a dotted name (``user.login``, ``token.create``, ``device.revoke``),
    ``actor`` a principal's :attr:`~bastion.server.auth.principal.Principal.actor`
    string, ``details`` a JSON-able mapping that must never contain secrets.
    """
    head = session.execute(
        select(AuditHead).where(AuditHead.id == 1).with_for_update()
    ).scalar_one()
    when = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    text = canonical(dict(details or {}))
    seq = head.seq + 1
    digest = entry_hash(
        seq=seq, at=when, actor=actor, event=event, org_id=org_id, details=text, prev=head.hash
    )
    entry = AuditEntry(
        seq=seq,
        at=when,
        actor=actor,
        event=event,
        org_id=org_id,
        details=text,
        prev_hash=head.hash,
        hash=digest,
    )
    session.add(entry)
    head.seq = seq
    head.hash = digest
    session.flush()
    return entry


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of a successful verification."""

    entries: int
    head_hash: str


def verify_entries(entries: Iterable[AuditEntry], head_seq: int, head_hash: str) -> ChainReport:
    """Check a sequence of entries (in ``seq`` order) against the head; raise on tamper."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    for entry in entries:
        if entry.seq != expected_seq:
            raise TamperError(
                f"audit entry {expected_seq} is missing or out of order: found seq {entry.seq}",
                stage="audit",
            )
        if entry.prev_hash != prev:
            raise TamperError(
                f"audit entry {entry.seq}: previous-hash link broken "
                f"(expected {prev[:16]}..., found {entry.prev_hash[:16]}...)",
                stage="audit",
            )
        digest = entry_hash(
            seq=entry.seq,
            at=entry.at,
            actor=entry.actor,
            event=entry.event,
            org_id=entry.org_id,
            details=entry.details,
            prev=prev,
        )
        if digest != entry.hash:
            raise TamperError(
                f"audit entry {entry.seq} ({entry.event}) was edited: content hash "
                f"{digest[:16]}... does not match stored {entry.hash[:16]}...",
                stage="audit",
            )
        prev = entry.hash
        expected_seq += 1
        count += 1
    if count != head_seq or prev != head_hash:
        raise TamperError(
            f"audit chain ends at entry {count} ({prev[:16]}...) but the head records "
            f"entry {head_seq} ({head_hash[:16]}...): entries were removed from the end",
            stage="audit",
        )
    return ChainReport(entries=count, head_hash=prev)


def verify_chain(session: Session) -> ChainReport:
    """Verify the whole stored chain, streaming in batches; raise TamperError on damage."""
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one()

    def stream() -> Iterable[AuditEntry]:
        last = 0
        while True:
            batch = (
                session.execute(
                    select(AuditEntry)
                    .where(AuditEntry.seq > last)
                    .order_by(AuditEntry.seq)
                    .limit(_VERIFY_BATCH)
                )
                .scalars()
                .all()
            )
            if not batch:
                return
            yield from batch
            last = batch[-1].seq
            session.expunge_all()

    return verify_entries(stream(), head.seq, head.hash)


def list_entries(
    session: Session, *, org_id: str | None, after: int = 0, limit: int = 100
) -> list[AuditEntry]:
    """Entries after ``after`` (one organisation's when ``org_id`` is given)."""
    query = select(AuditEntry).where(AuditEntry.seq > after)
    if org_id is not None:
        query = query.where(AuditEntry.org_id == org_id)
    return list(session.execute(query.order_by(AuditEntry.seq).limit(limit)).scalars())
