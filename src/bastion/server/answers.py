"""The device answer cache: heartbeat answers kept per process, dropped when the database
says they changed (PostgreSQL only; docs/adr/0044-device-answer-cache.md).

:class:`AnswerCache` holds the body of each successful answer of the three heartbeat
routes (:mod:`bastion.server.hotpath`), keyed by the SHA-256 of the request's
``Authorization`` header and the path, with the device it belongs to, its rate-limit
key and a deadline: the earliest of the end of the gate's pass and :data:`ANSWER_TTL`
after it was stored. Per device it also knows the newest ``last_seen_at``: once that is
``presence_seconds`` old, the next hit records the device as seen then (a miss hands
its presence to the same record, :meth:`Listener.record_presence`), and the listener
writes what was recorded once a second (:func:`write_presence`, the full path's own
rule; ADR 0045). An answer that shows ``last_seen_at`` (``GET /v1/device``) is kept as
the bytes around that value and shown again with the device's newest one.

What changes an answer is a write to one of :data:`WATCHED` tables. Migration 0026 puts
a trigger on each of them that sends ``NOTIFY bastion_answers`` with the row's device
id (the column :data:`WATCHED` names) or ``*`` (a fleet-wide table); an update of a
device that changes only ``last_seen_at`` sends :func:`seen_payload` instead, which
drops no answer but moves the device's presence (the answers that show it are rendered
again). :class:`Listener` holds one ``LISTEN`` connection per process, applies each
notification (:meth:`Listener.apply`) and checks that the triggers are there.

This process's own writes are not left to the notification: :meth:`Listener.watch_writes`
records, in each session, what its flushes and ORM statements change in the watched
tables, in the same payloads, and applies them when the session commits, before the
committing code goes on (a request that wrote, then its next one, read what was
written).

Rules that keep the cache from answering what the database would not:

* it is *off* until the listener's ``LISTEN`` has succeeded and from the moment its
  connection fails or stops answering, or a watched table's trigger is missing or
  disabled; turning on or off empties it (notifications may have been missed while off);
* a request that misses takes a :meth:`~AnswerCache.ticket` before it reads anything
  and its answer is stored only if, in between, the cache was not emptied and the
  answer's device did not change (:meth:`~AnswerCache.put`); a move of only the
  device's presence (a ``seen:``) refuses only an answer that shows ``last_seen_at``
  (the others are kept, but the ``last_seen_at`` they were read with is not taken
  as the device's presence);
* an entry at or past its deadline is a miss;
* only successful answers are stored; errors always take the full path.

Every method runs on the serving event loop (the hot-path layer, the listener task);
nothing here takes a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList

if TYPE_CHECKING:
    from sqlalchemy.orm import ORMExecuteState, Session

    from bastion.server.db.engine import Database

#: the PostgreSQL channel the triggers of migration 0026 notify
CHANNEL = "bastion_answers"
#: the payload that drops every answer (a fleet-wide table changed)
EVERY_DEVICE = "*"
#: table -> the column holding the device id its rows belong to (None: fleet-wide,
#: every answer may depend on it). Every table the three heartbeat answers read is
#: here; tests/integration/server/test_answer_cache.py records their reads and fails
#: on a table missing from this map.
WATCHED: dict[str, str | None] = {
    "devices": "id",
    "device_env": "device_id",
    "device_tags": "device_id",
    "attestation_verdicts": "device_id",
    "rollout_devices": "device_id",
    "fleets": None,
    "fleet_env": None,
    "fleet_attestation": None,
    "fleet_golden": None,
    "fleet_targets": None,
    "releases": None,
    "rollouts": None,
    "rollout_waves": None,
}
#: no answer is served from the cache longer than this after it was stored (seconds;
#: ADR 0045: the triggers say what changed, this bounds what a bug could cost)
ANSWER_TTL = 900.0
#: a device's ``last_seen_at`` is due for its next write this long after the last one
#: (``devices.service.LAST_SEEN_RESOLUTION``; the app passes it, a test holds them equal)
PRESENCE_SECONDS = 60.0
#: the payload prefix of a write that changed only a device's ``last_seen_at``:
#: ``seen:<device id>:<ISO 8601 time>``
SEEN_PREFIX = "seen:"
#: the devices column whose writes keep a device's answers (those that show it are
#: rendered again)
PRESENCE_COLUMN = "last_seen_at"
#: the presence the hits record is written this often (seconds; ADR 0045)
PRESENCE_FLUSH_SECONDS = 1.0
#: the two triggers migration 0026 puts on each watched table
TRIGGERS = ("bastion_answers", "bastion_answers_truncate")
#: entries per process by default (``device_answer_cache_entries``): three per device,
#: each about 200 bytes plus its body; when full the oldest stored is evicted
ANSWERS_MAX = 131_072
#: the listener checks its connection this often when no notification arrives (seconds)
LISTEN_CHECK_SECONDS = 5.0
#: ... and turns the cache off when the check takes longer than this
LISTEN_CHECK_TIMEOUT = 2.0
RECONNECT_MIN = 0.05
RECONNECT_MAX = 5.0
#: application_name of the listening connection (find it in pg_stat_activity)
LISTEN_APP_NAME = "bastion-answers-listen"

#: session.info key: devices (or EVERY_DEVICE) whose answers the session's writes change
_CHANGED = "bastion.answers.changed"
#: execution option of an ORM statement that changes no answer's input (a lock taken
#: by a no-op UPDATE): this process does not drop answers for it
UNCHANGED_OPTION = "bastion_answers_unchanged"

log = logging.getLogger(__name__)

_Key = tuple[bytes, str]


def credential_key(authorization: bytes) -> bytes:
    """The cache key of a request's ``Authorization`` header value (its SHA-256)."""
    return hashlib.sha256(authorization).digest()


@dataclass(frozen=True, slots=True)
class Answer:
    """A kept answer: the JSON body, whose it is, and until when it may be served."""

    body: bytes
    device_id: str
    rate_key: str
    #: POSIX seconds; a hit at or after this is a miss
    until: float
    #: the device's ``last_seen_at`` the body was made with (POSIX seconds)
    seen_at: float
    #: the body again, showing another ``last_seen_at``: only for an answer that shows
    #: it (``GET /v1/device``); the cache calls it when the device's presence moved
    render: Callable[[dt.datetime], bytes] | None = None

    @property
    def shows_presence(self) -> bool:
        """The body shows the device's ``last_seen_at``."""
        return self.render is not None


def seen_payload(device_id: str, at: dt.datetime) -> str:
    """The notification of a write that changed only ``device_id``'s ``last_seen_at``."""
    return f"{SEEN_PREFIX}{device_id}:{at.isoformat()}"


def parse_seen(payload: str) -> tuple[str, dt.datetime] | None:
    """(device id, aware time) of a :func:`seen_payload`; None if it is not a well-formed
    one (the caller then drops the device's answers, or all of them)."""
    device, sep, when = payload[len(SEEN_PREFIX) :].partition(":")
    if not device or not sep:
        return None
    try:
        at = dt.datetime.fromisoformat(when)
    except ValueError:
        return None
    return device, at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def utc(at: float) -> dt.datetime:
    """The aware UTC time of POSIX seconds ``at`` (to the microsecond)."""
    return dt.datetime.fromtimestamp(at, dt.UTC)


def deadline(stored: dt.datetime, *bounds: dt.datetime | None) -> float:
    """An answer's deadline: :data:`ANSWER_TTL` after ``stored``, or the earliest of
    ``bounds`` if sooner (None: that fact sets no bound)."""
    until = posix(stored) + ANSWER_TTL
    for bound in bounds:
        if bound is not None:
            until = min(until, posix(bound))
    return until


def posix(when: dt.datetime) -> float:
    """POSIX seconds of ``when``; a naive time (SQLite's columns) is UTC, as stored."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


class AnswerCache:
    """Heartbeat answers of one server process (see the module docstring)."""

    def __init__(
        self, max_entries: int = ANSWERS_MAX, presence_seconds: float = PRESENCE_SECONDS
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self.presence_seconds = presence_seconds
        #: in the order stored: when full, the first is evicted
        self._entries: OrderedDict[_Key, Answer] = OrderedDict()
        self._by_device: dict[str, set[_Key]] = {}
        #: newest ``last_seen_at`` known of each device with answers (POSIX seconds, the
        #: time itself for the answers that show it, and whether the database said so:
        #: False while it is a hit's record not yet confirmed by a ``seen:``)
        self._seen: dict[str, tuple[float, dt.datetime, bool]] = {}
        #: presence recorded by hits and not yet written (:meth:`take_due`)
        self._due: dict[str, dt.datetime] = {}
        #: numbers every change (:meth:`ticket`); the number of the last emptying, and
        #: of each device's last change (bounded: when full it counts as an emptying)
        self._changes = 0
        self._emptied_at = 0
        self._changed_at: dict[str, int] = {}
        #: the number of each device's last presence move (a ``seen:``), and of the last
        #: time that record was full and forgotten: a fill that read the device before
        #: it may show an old ``last_seen_at`` (bounded as ``_changed_at``)
        self._moved_at: dict[str, int] = {}
        self._moves_lost = 0
        self._online = False
        #: device id -> what verifying its signatures needs (ADR 0048; an opaque value
        #: here), in the order stored: when full, the first is evicted
        self._known: OrderedDict[str, object] = OrderedDict()
        #: counters for tests, benchmarks and /metrics
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self.refused = 0
        self.invalidations = 0
        self.presence_writes = 0
        self.presence_recorded = 0
        self.rendered = 0
        self.evicted = 0

    @property
    def online(self) -> bool:
        """True while the listener holds ``LISTEN``: only then is anything served or kept."""
        return self._online

    def __len__(self) -> int:
        return len(self._entries)

    def set_online(self, online: bool) -> None:
        """Turn the cache on (the listener is listening) or off; either way it empties
        and tickets taken before are void."""
        self._online = online
        self._clear()

    def get(
        self, key: bytes, path: str, now: float, at: dt.datetime | None = None
    ) -> Answer | None:
        """The kept answer of ``path`` for this credential, if the cache is on and the
        answer's deadline is after ``now`` (POSIX seconds; ``at``: the same instant as a
        time, else derived from it).

        When the device's ``last_seen_at`` is ``presence_seconds`` old, this hit is its
        presence: the device is recorded as seen at ``at`` for :meth:`take_due`. An
        answer that shows ``last_seen_at`` is rendered again when it shows an older one
        than the device's newest."""
        entry = (key, path)
        found = self._entries.get(entry) if self._online else None
        if found is None or now >= found.until:
            self.misses += 1
            return None
        device = found.device_id
        seen = self._seen.get(device)
        if seen is None or now >= seen[0] + self.presence_seconds:
            self.record_due(device, at if at is not None else utc(now))
            seen = self._seen[device]
        if found.render is not None and found.seen_at != seen[0]:
            found = replace(found, body=found.render(seen[1]), seen_at=seen[0])
            self._entries[entry] = found
            self.rendered += 1
        self.hits += 1
        return found

    def record_due(self, device_id: str, at: dt.datetime) -> None:
        """``device_id`` was seen at ``at`` and its presence was due: keep it for
        :func:`write_presence` (a hit here, or the full path through
        :meth:`Listener.record_presence`); its answers show ``at`` from now on."""
        known = self._due.get(device_id)
        if known is None or at > known:
            self._due[device_id] = at
        self.presence_recorded += 1
        seen = self._seen.get(device_id)
        when = posix(at)
        if device_id in self._by_device and (seen is None or when > seen[0]):
            self._seen[device_id] = (when, at, False)

    def presence_due(self, device_id: str, now: float) -> bool:
        """Whether ``device_id``'s ``last_seen_at`` may be ``presence_seconds`` old at
        ``now`` (POSIX seconds): True unless this process knows a newer one (it knows
        only devices with kept answers)."""
        seen = self._seen.get(device_id)
        return seen is None or now >= seen[0] + self.presence_seconds

    def take_due(self) -> dict[str, dt.datetime]:
        """The presence hits recorded since the last call (device -> time seen), to be
        written by :func:`write_presence`; give them back with :meth:`return_due` if
        that fails."""
        due, self._due = self._due, {}
        return due

    def return_due(self, due: Mapping[str, dt.datetime]) -> None:
        """Record again presence that could not be written (the newest time wins)."""
        for device, at in due.items():
            known = self._due.get(device)
            if known is None or at > known:
                self._due[device] = at

    @property
    def due(self) -> int:
        """Devices whose recorded presence is not written yet."""
        return len(self._due)

    def ticket(self) -> int | None:
        """Take before reading what an answer is made of; give to :meth:`put`. None when
        the cache is off (nothing will be kept)."""
        return self._changes if self._online else None

    def put(self, ticket: int | None, key: bytes, path: str, answer: Answer) -> bool:
        """Keep ``answer`` unless the cache is off, or since ``ticket`` was taken it was
        emptied or ``answer``'s device changed (the answer may predate that change).
        True if kept."""
        if (
            ticket is None
            or not self._online
            or self._emptied_at > ticket
            or self._changed_at.get(answer.device_id, 0) > ticket
        ):
            self.refused += 1
            return False
        # only the device's presence moved since: the body is still right, but its
        # last_seen_at may be the old one (kept only where the body does not show it)
        moved = self._moved_at.get(answer.device_id, 0) > ticket or self._moves_lost > ticket
        if moved and answer.shows_presence:
            self.refused += 1
            return False
        entry = (key, path)
        old = self._entries.pop(entry, None)
        if old is not None and old.device_id != answer.device_id:  # pragma: no cover
            self._unindex(entry, old.device_id)  # a key moved to another device
        while len(self._entries) >= self.max_entries:  # full: the oldest stored goes
            evicted, gone = self._entries.popitem(last=False)
            self._unindex(evicted, gone.device_id)
            self.evicted += 1
        self._entries[entry] = answer
        self._by_device.setdefault(answer.device_id, set()).add(entry)
        known = self._seen.get(answer.device_id)
        if not moved and (known is None or answer.seen_at > known[0]):
            # not yet stored while this process still has it to write
            confirmed = answer.device_id not in self._due
            self._seen[answer.device_id] = (answer.seen_at, utc(answer.seen_at), confirmed)
        self.stored += 1
        return True

    def known(self, device_id: str) -> object | None:
        """What :meth:`keep_known` kept of ``device_id``, while the cache is on."""
        return self._known.get(device_id) if self._online else None

    def keep_known(self, ticket: int | None, device_id: str, value: object) -> bool:
        """Keep ``value`` (the device's verified key, ADR 0048) under :meth:`put`'s rule: not
        if the cache is off, or was emptied or the device changed since ``ticket``. It
        is dropped with the device's answers. True if kept."""
        if (
            ticket is None
            or not self._online
            or self._emptied_at > ticket
            or self._changed_at.get(device_id, 0) > ticket
        ):
            return False
        self._known.pop(device_id, None)
        while len(self._known) >= self.max_entries:
            self._known.popitem(last=False)
        self._known[device_id] = value
        return True

    def invalidate(self, device_id: str) -> None:
        """Drop the answers of ``device_id`` (:data:`EVERY_DEVICE`: all of them) and what
        is known of its key."""
        self.invalidations += 1
        if device_id == EVERY_DEVICE:
            self._clear()
            return
        self._mark(device_id)
        self._known.pop(device_id, None)
        for entry in self._by_device.pop(device_id, ()):
            self._entries.pop(entry, None)
        self._seen.pop(device_id, None)

    def seen(self, device_id: str, at: dt.datetime) -> None:
        """Only ``last_seen_at`` of ``device_id`` was written, to ``at``: its answers
        stay (those that show it are rendered again on their next hit) and its next
        presence is due ``presence_seconds`` after ``at``. A fill under way for the
        device is refused only if its answer shows ``last_seen_at`` (:meth:`put`).

        The stored time wins over a hit's own record (another process wrote the same
        minute first, so this one's write will not happen); otherwise only a newer time
        moves the device's presence."""
        self.presence_writes += 1
        self._move(device_id)  # a fill under way may have read the old last_seen_at
        if device_id not in self._by_device:
            return
        when = posix(at)
        known = self._seen.get(device_id)
        if known is None or when > known[0] or not known[2]:
            self._seen[device_id] = (when, at, True)

    def _mark(self, device_id: str) -> None:
        if self._number(self._changed_at, device_id):  # full: count it as an emptying
            self._emptied_at = self._changes

    def _move(self, device_id: str) -> None:
        if self._number(self._moved_at, device_id):  # full: every device counts as moved
            self._moves_lost = self._changes

    def _number(self, record: dict[str, int], device_id: str) -> bool:
        """Number a change of ``device_id`` in ``record``; True when that made the record
        too large and it was cleared (bounded by ``max_entries``)."""
        self._changes += 1
        record[device_id] = self._changes
        if len(record) > self.max_entries:
            record.clear()
            return True
        return False

    def _unindex(self, entry: _Key, device_id: str) -> None:
        keys = self._by_device.get(device_id)
        if keys is not None:
            keys.discard(entry)
            if not keys:
                del self._by_device[device_id]
                self._seen.pop(device_id, None)

    def _clear(self) -> None:
        self._changes += 1
        self._emptied_at = self._changes
        self._changed_at.clear()
        self._moved_at.clear()
        self._entries.clear()
        self._by_device.clear()
        self._seen.clear()
        self._known.clear()


def touched_by_row(row: Any, *, updated: bool = False) -> str | None:
    """What a flushed ORM row changes, as a notification payload: its device's id,
    :data:`EVERY_DEVICE` for a fleet-wide table (or a row whose device is not loaded),
    a :func:`seen_payload` for an ``updated`` device whose only change is
    ``last_seen_at``; None for an unwatched table."""
    table = getattr(row, "__tablename__", None)
    if table not in WATCHED:
        return None
    column = WATCHED[table]
    if column is None:
        return EVERY_DEVICE
    state = sa_inspect(row)
    value = state.dict.get(column)  # never loads: a flush must not query
    if value is None:
        return EVERY_DEVICE
    if updated and table == "devices":
        changed = {a.key for a in state.attrs if a.history.has_changes()}
        at = state.dict.get(PRESENCE_COLUMN)
        if changed == {PRESENCE_COLUMN} and isinstance(at, dt.datetime):
            return seen_payload(str(value), at)
    return str(value)


def touched_by_statement(statement: Any, parameters: Any) -> set[str]:
    """The devices an ORM ``INSERT``/``UPDATE``/``DELETE`` changes answers of: those its
    rows or its ``WHERE <device column> = :value`` name, else :data:`EVERY_DEVICE`;
    empty for an unwatched table."""
    table = getattr(getattr(statement, "table", None), "name", None)
    if table not in WATCHED:
        return set()
    column = WATCHED[table]
    if column is None:
        return {EVERY_DEVICE}
    rows = parameters if isinstance(parameters, list) else [parameters or {}]
    named = {str(r[column]) for r in rows if isinstance(r, dict) and r.get(column) is not None}
    if named and all(isinstance(r, dict) and r.get(column) is not None for r in rows):
        return named
    device = _where_device(getattr(statement, "whereclause", None), table, column)
    return {device} if device is not None else {EVERY_DEVICE}


def _where_device(where: Any, table: str, column: str) -> str | None:
    """``value`` when ``where`` is ``<table>.<column> = value`` or an AND with that term."""
    if where is None:
        return None
    terms: Iterable[Any] = (
        where.clauses
        if isinstance(where, BooleanClauseList) and where.operator is operators.and_
        else (where,)
    )
    for term in terms:
        if not (isinstance(term, BinaryExpression) and term.operator is operators.eq):
            continue
        left, right = term.left, term.right
        on = getattr(getattr(left, "table", None), "name", None)
        named = on == table and getattr(left, "name", None) == column
        if named and isinstance(right, BindParameter) and right.effective_value is not None:
            return str(right.effective_value)
    return None


#: (table, trigger) of every trigger of migration 0026 that is enabled for ordinary
#: sessions, on a table this connection's search path finds
_TRIGGERS_QUERY = """
SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE t.tgname = ANY(%s) AND t.tgenabled IN ('O', 'A') AND pg_table_is_visible(c.oid)
"""

#: the presence the hits recorded (ADR 0045): ``devices.service.touch``'s rule, for many
#: devices in one statement
#: the presence write of ADR 0045 (also the signed heartbeats', ADR 0048), in psycopg's
#: parameter style
PRESENCE_UPDATE = """
UPDATE devices AS d SET last_seen_at = v.at
FROM unnest(CAST(%(ids)s AS text[]), CAST(%(ats)s AS timestamp[])) AS v(id, at)
WHERE d.id = v.id AND d.status = 'active'
  AND (d.last_seen_at IS NULL OR d.last_seen_at <= v.at - make_interval(secs => %(resolution)s))
"""


def missing_triggers(found: Iterable[tuple[str, str]]) -> list[str]:
    """``table.trigger`` of each trigger of a watched table not in ``found``, sorted."""
    have = set(found)
    return sorted(f"{t}.{g}" for t in WATCHED for g in TRIGGERS if (t, g) not in have)


def write_presence(db: Database, due: Mapping[str, dt.datetime], resolution: float) -> int:
    """Write ``last_seen_at`` of each device of ``due`` whose stored one is at least
    ``resolution`` seconds older (or unset) and that is active, in one statement and
    transaction; the number of devices written. Core, not a session: the trigger's
    ``seen:`` notification tells every process, this one included. Times are stored as
    naive UTC, as :class:`~bastion.server.db.base.UtcDateTime` stores them."""
    if not due:
        return 0
    ids = list(due)
    with db.engine.begin() as conn:
        result = conn.exec_driver_sql(
            PRESENCE_UPDATE,
            {
                "ids": ids,
                "ats": [due[i].astimezone(dt.UTC).replace(tzinfo=None) for i in ids],
                "resolution": resolution,
            },
        )
    return int(result.rowcount)


class Listener:
    """The ``LISTEN bastion_answers`` connection of one process, feeding ``cache``, and
    the writer of the presence its hits record (when given the app's ``db``).

    :meth:`ensure` starts both in the running event loop (again after that loop ended: a
    test client's loop, a restarted server). The listener reconnects with exponential
    backoff and jitter; while it is not listening, or a trigger is missing, the cache is
    off."""

    def __init__(self, cache: AnswerCache, database_url: str, db: Database | None = None) -> None:
        from bastion.server.bus_pg import libpq_url
        from bastion.server.db.engine import redact

        self.cache = cache
        self._url = libpq_url(database_url)
        self._shown = redact(database_url)
        self._db = db
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._barriers: dict[str, asyncio.Future[None]] = {}
        #: the listening connection while it waits for notifications (:meth:`drain`)
        self._waiting: Any = None
        #: times ``LISTEN`` succeeded (tests, diagnostics)
        self.connects = 0
        #: presence writes that failed (they are tried again)
        self.presence_failures = 0
        #: why the cache is off, as last logged (None: it is not, or never was, off)
        self.problem: str | None = None

    def ensure(self) -> None:
        """Start listening (and writing presence) in the running loop unless it does."""
        loop = asyncio.get_running_loop()
        if not (self._task is not None and self._loop is loop and not self._task.done()):
            self.cache.set_online(False)
            self._waiting = None  # a connection of a loop that has ended is not drained
            self._loop = loop
            self._task = loop.create_task(self._run(), name="bastion-answers-listen")
        writer = self._writer
        if self._db is not None and (
            writer is None or writer.done() or writer.get_loop() is not loop
        ):
            self._writer = loop.create_task(self._write_loop(), name="bastion-answers-presence")

    def record_presence(self, device_id: str, at: dt.datetime) -> bool:
        """Have the writer store ``device_id``'s ``last_seen_at`` = ``at`` (the full path's
        presence write, from a worker thread or the loop); False when there is no
        running writer, and the caller writes it itself."""
        loop, writer = self._loop, self._writer
        if self._db is None or loop is None or loop.is_closed() or writer is None or writer.done():
            return False
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.cache.record_due(device_id, at)
            return True
        try:  # runs before the worker's result reaches the loop (callbacks run in order)
            loop.call_soon_threadsafe(self.cache.record_due, device_id, at)
        except RuntimeError:  # the loop is closing: write it here
            return False
        return True

    async def _write_loop(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_FLUSH_SECONDS)
            await self.flush_presence()

    async def flush_presence(self) -> int:
        """Write the presence the hits recorded (:func:`write_presence`) in a worker
        thread; on failure keep it for the next try. The number of devices written."""
        from starlette.concurrency import run_in_threadpool

        due = self.cache.take_due()
        if not due or self._db is None:
            return 0
        try:
            return await run_in_threadpool(
                write_presence, self._db, due, self.cache.presence_seconds
            )
        except Exception as exc:  # the database is away: try again next time
            self.cache.return_due(due)
            self.presence_failures += 1
            log.warning(
                "answer cache: writing last_seen_at of %d devices failed (%s); trying again",
                len(due),
                exc,
            )
            return 0

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            application_name=LISTEN_APP_NAME,
            connect_timeout=5,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=2,
        )

    async def _run(self) -> None:
        delay = RECONNECT_MIN
        while True:
            conn = None
            try:
                conn = await self._connect()
                await conn.execute(f"LISTEN {CHANNEL}")
                await self._check(conn)
                self.connects += 1
                delay = RECONNECT_MIN
                if self.problem is not None:
                    log.warning(
                        "answer cache: listening on %s again; answers are cached", self._shown
                    )
                    self.problem = None
                self.cache.set_online(True)
                await self._serve(conn)
            except asyncio.CancelledError:
                self.cache.set_online(False)
                raise
            except Exception as exc:  # psycopg errors, a failed check: off, then retry
                self.cache.set_online(False)
                if str(exc) != self.problem:  # once per cause, not once per retry
                    log.warning(
                        "answer cache: listener on %s lost (%s); answers are not cached until "
                        "it is back",
                        self._shown,
                        exc,
                    )
                    self.problem = str(exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(RECONNECT_MAX, delay * 2)
            finally:
                self.cache.set_online(False)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _serve(self, conn: Any) -> None:
        while True:
            self._waiting = conn
            try:
                async for notice in conn.notifies(timeout=LISTEN_CHECK_SECONDS):
                    self._heard(notice.payload)
            finally:
                self._waiting = None
            # every LISTEN_CHECK_SECONDS: the connection answers, the triggers are there
            await asyncio.wait_for(self._check(conn), LISTEN_CHECK_TIMEOUT)

    @staticmethod
    async def _check(conn: Any) -> None:
        """Raise unless every watched table has both its triggers, enabled."""
        cursor = await conn.execute(_TRIGGERS_QUERY, (list(TRIGGERS),))
        missing = missing_triggers(await cursor.fetchall())
        if missing:
            raise RuntimeError(
                f"the answer cache's triggers are missing or disabled: {', '.join(missing)} "
                "(migration 0026_answer_triggers)"
            )

    def drain(self) -> None:
        """Handle the notifications that have reached this process's socket but not yet
        the listener task (which runs only when the loop gets to it): the hot path calls
        this before each lookup, so an answer is never older than what PostgreSQL has
        sent. A non-blocking read; only while the listener waits for notifications (a
        read during its connection check would take the check's answer)."""
        conn = self._waiting
        if conn is None:
            return
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except Exception:  # the listener task sees the broken connection and turns off
            self.cache.set_online(False)
            return
        while (notice := pgconn.notifies()) is not None:
            self._heard(notice.extra.decode())

    def watch_writes(self, db: Database) -> None:
        """Drop the answers this process's own commits change, before the committing
        code goes on (see the module docstring); the notification does it again."""
        db.listen_sessions("after_flush", self._flushed)
        db.listen_sessions("do_orm_execute", self._executed)
        db.listen_sessions("after_commit", self._committed)

    @staticmethod
    def _flushed(session: Session, _context: Any) -> None:
        changed: set[str] = session.info.setdefault(_CHANGED, set())
        for rows, updated in (
            (session.new, False),
            (session.dirty, True),
            (session.deleted, False),
        ):
            for row in rows:
                payload = touched_by_row(row, updated=updated)
                if payload is not None:
                    changed.add(payload)

    @staticmethod
    def _executed(state: ORMExecuteState) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            if state.execution_options.get(UNCHANGED_OPTION):
                return
            devices = touched_by_statement(state.statement, state.parameters)
            if devices:
                state.session.info.setdefault(_CHANGED, set()).update(devices)

    def _committed(self, session: Session) -> None:
        changed = session.info.pop(_CHANGED, None)
        if changed:
            self.changed_here(changed)

    def changed_here(self, payloads: Iterable[str]) -> None:
        """Apply ``payloads`` (as notified) now when called on the serving loop, else as
        the loop's next callback (before the result of a worker thread that called it)."""
        loop, payloads = self._loop, tuple(payloads)
        if loop is None or loop.is_closed():
            return  # no loop has served: nothing is kept
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._drop(payloads)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to keep
            loop.call_soon_threadsafe(self._drop, payloads)

    def _drop(self, payloads: tuple[str, ...]) -> None:
        for payload in payloads:
            self.apply(payload)

    def apply(self, payload: str) -> None:
        """Apply one notification: a device id, :data:`EVERY_DEVICE`, or a
        :func:`seen_payload` (a malformed one drops everything)."""
        if payload.startswith(SEEN_PREFIX):
            seen = parse_seen(payload)
            if seen is None:
                self.cache.invalidate(EVERY_DEVICE)
            else:
                self.cache.seen(*seen)
            return
        self.cache.invalidate(payload or EVERY_DEVICE)

    def _heard(self, payload: str) -> None:
        if payload.startswith("barrier:"):
            waiter = self._barriers.pop(payload, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        self.apply(payload)

    async def barrier(self, timeout: float = 5.0) -> None:
        """Return once this listener has handled every notification committed before the
        call (PostgreSQL delivers them in commit order): a test's way to wait for a
        change made elsewhere to reach this process's cache."""
        import secrets

        import psycopg

        self.ensure()
        name = f"barrier:{secrets.token_hex(8)}"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[name] = waiter
        try:
            async with asyncio.timeout(timeout):
                while not self.cache.online:
                    await asyncio.sleep(0.01)
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, name))
                await waiter
        finally:
            self._barriers.pop(name, None)

    async def close(self) -> None:
        """Stop listening (the cache goes off) and write the presence still recorded;
        :meth:`ensure` may start both again."""
        for task in (self._task, self._writer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._writer = None
        self.cache.set_online(False)
        await self.flush_presence()


class AnswerCacheCollector:
    """This process's answer cache for ``/metrics`` (a prometheus-client collector, read
    at scrape time: nothing is added to the request path)."""

    def __init__(self, cache: AnswerCache) -> None:
        self.cache = cache

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cache = self.cache
        answers = CounterMetricFamily(
            "bastion_device_answers",
            "Heartbeat answers of this process's answer cache by outcome",
            labels=["outcome"],
        )
        for outcome, value in (
            ("hit", cache.hits),
            ("miss", cache.misses),
            ("stored", cache.stored),
            ("refused", cache.refused),
        ):
            answers.add_metric([outcome], value)
        yield answers
        yield GaugeMetricFamily(
            "bastion_device_answers_kept", "Answers this process keeps now", value=len(cache)
        )
        yield CounterMetricFamily(
            "bastion_device_presence_recorded",
            "Devices whose last_seen_at a cached answer recorded, to be written behind",
            value=cache.presence_recorded,
        )
        yield GaugeMetricFamily(
            "bastion_device_presence_pending",
            "Devices whose recorded last_seen_at this process has not written yet",
            value=cache.due,
        )
        yield GaugeMetricFamily(
            "bastion_device_answer_cache_online",
            "1 while this process's answer cache listens for changes, else 0",
            value=1 if cache.online else 0,
        )
