"""The audit API: append a chained, MACed entry; seal; checkpoint; verify the chain.

Every entry's ``hash`` chains it to the previous one and its ``mac`` is made with the
audit key kept outside the database (:mod:`.keys`); the head row carries its own MAC.
The checks themselves are pure and live in :mod:`.chain`; this module only reads and
writes rows. :func:`verify_chain` raises :class:`~bastion.errors.TamperError`
(``stage="audit"``) naming the first entry that was edited, removed, reordered, forged
or stripped of its MAC, or a head that was cut back; with a checkpoint
(:func:`verify_chain` ``checkpoint=``) also a chain cut back with an old genuine head.

Call :func:`record` inside the caller's transaction so the audit entry commits or
rolls back with the change it describes::

    from bastion.server.audit.service import record
    record(session, "device.revoke", principal.actor, {"device": dev.id}, org_id=org.id)
    session.commit()
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bastion.errors import ConfigError
from bastion.server.audit.chain import (
    GENESIS,
    AuditHeadRow,
    AuditRow,
    ChainReport,
    Checkpoint,
    canonical,
    encode_tag,
    entry_hash,
    entry_mac_input,
    head_mac_input,
    make_checkpoint,
    verify_rows,
)
from bastion.server.audit.keys import session_key
from bastion.server.audit.models import AuditEntry, AuditHead

__all__ = [
    "GENESIS",
    "ChainReport",
    "canonical",
    "checkpoint",
    "entry_hash",
    "list_entries",
    "record",
    "seal",
    "verify_chain",
    "verify_entries",
]

_VERIFY_BATCH = 1000


def _locked_head(session: Session) -> AuditHead:
    return session.execute(
        select(AuditHead).where(AuditHead.id == 1).with_for_update()
    ).scalar_one()


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
    string, ``details`` a JSON-able mapping that must never contain secrets. Refused
    (ConfigError) when no audit key is attached or the chain was never sealed.
    """
    key = session_key(session)
    head = _locked_head(session)
    if head.server_id is None:
        raise ConfigError("the audit chain is not sealed: start the server once with its key")
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
        mac=encode_tag(key.tag(entry_mac_input(head.server_id, seq, digest))),
    )
    session.add(entry)
    head.seq = seq
    head.hash = digest
    head.mac = encode_tag(key.tag(head_mac_input(head.server_id, seq, digest)))
    session.flush()
    return entry


def _row(entry: AuditEntry) -> AuditRow:
    return AuditRow(
        seq=entry.seq,
        at=entry.at,
        actor=entry.actor,
        event=entry.event,
        org_id=entry.org_id,
        details=entry.details,
        prev_hash=entry.prev_hash,
        hash=entry.hash,
        mac=entry.mac,
    )


def _head_row(head: AuditHead) -> AuditHeadRow:
    return AuditHeadRow(seq=head.seq, hash=head.hash, server_id=head.server_id, mac=head.mac)


def _stream(session: Session) -> Iterator[AuditRow]:
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
        rows = [_row(e) for e in batch]
        last = rows[-1].seq
        for entry in batch:
            session.expunge(entry)
        yield from rows


def seal(session: Session, now: dt.datetime) -> int:
    """Give a chain that has no server id one, and MAC its entries and head (commits).

    Runs on every start and does nothing once sealed. Entries written before MACs
    existed (the 0011 migration) are checked as a hash chain first (TamperError if
    broken), then MACed; that adoption is recorded as ``audit.seal``. Returns the
    number of entries adopted.
    """
    key = session_key(session)
    head = _locked_head(session)
    if head.server_id is not None:
        return 0
    verify_rows(_stream(session), _head_row(head), None)
    server_id = secrets.token_hex(16)
    adopted = 0
    for entry in session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars():
        entry.mac = encode_tag(key.tag(entry_mac_input(server_id, entry.seq, entry.hash)))
        adopted += 1
    head.server_id = server_id
    head.mac = encode_tag(key.tag(head_mac_input(server_id, head.seq, head.hash)))
    session.flush()
    if adopted:
        record(
            session,
            "audit.seal",
            "system:server",
            {"adopted": adopted, "key_id": key.key_id, "alg": key.alg},
            at=now,
        )
    session.commit()
    return adopted


def verify_entries(entries: Iterable[Any], head_seq: int, head_hash: str) -> ChainReport:
    """Check the hash chain only (no MACs) against a head; raise TamperError on damage."""
    return verify_rows(entries, AuditHeadRow(head_seq, head_hash, None, None), None)


def verify_chain(session: Session, checkpoint: Checkpoint | None = None) -> ChainReport:
    """Verify the whole stored chain with the attached key (and a checked checkpoint)."""
    key = session_key(session)
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one()
    head_row = _head_row(head)
    session.expunge(head)
    return verify_rows(_stream(session), head_row, key, checkpoint)


def checkpoint(session: Session, now: dt.datetime) -> Checkpoint:
    """Verify the chain, then sign its head (seq, hash, time) with the audit key."""
    report = verify_chain(session)
    if report.server_id is None:  # pragma: no cover - verify_rows refuses unsealed chains
        raise ConfigError("the audit chain is not sealed")
    key = session_key(session)
    return make_checkpoint(key, report.server_id, report.entries, report.head_hash, now)


def list_entries(
    session: Session, *, org_id: str | None, after: int = 0, limit: int = 100
) -> list[AuditEntry]:
    """Entries after ``after`` (one organisation's when ``org_id`` is given)."""
    query = select(AuditEntry).where(AuditEntry.seq > after)
    if org_id is not None:
        query = query.where(AuditEntry.org_id == org_id)
    return list(session.execute(query.order_by(AuditEntry.seq).limit(limit)).scalars())
