"""Signed requests' writes, group-committed (docs/adr/0048-signed-requests-on-the-hot-path.md).

:class:`SignedWriter` is how the hot path stores what a verified device request signature
writes: its nonce and, for ``POST /v1/device/heartbeat``, what the agent reported.
:meth:`SignedWriter.remember` queues the request and waits; one flush at a time takes
what is queued (all of it, but a device's second heartbeat, which waits for the next
flush) and writes it with :func:`store` in **one statement** (data-modifying CTEs, in
autocommit: one round trip, atomic; ADR 0048 amendment):

1. every :data:`SWEEP_SECONDS` at most, first, the expired nonces of every device go
   (a statement of its own);
2. ``ins``: the nonces, ``INSERT ... SELECT FROM unnest(...) JOIN devices (active) ON
   CONFLICT DO NOTHING RETURNING``. A request whose row came back used a new nonce; any
   other is a replay, or its device was revoked or deleted meanwhile (one more query,
   only then, tells which). The table and its rule are the full path's
   (:func:`~.service.remember_nonce`): one row per device and nonce, kept
   :data:`~.service.NONCE_KEEP`, so either path refuses the other's replays, whichever
   process sees them;
3. for the heartbeats whose nonce ``ins`` returned: their presence rows (one upsert per
   set of reported fields, usually one), the devices' ``agent_version``/``os_version``
   where a reported one differs (``RETURNING`` names them: the caller drops their
   answers here at once) and their ``last_seen_at`` by the presence rule of ADR 0045
   (once a minute), in one ``UPDATE``, and the commands pending for each device.

A flush runs on the writer's own PostgreSQL connection, with psycopg on the serving loop
(no worker thread, no ORM). A flush that fails fails every request it carried, and the
connection is closed (the next flush connects again); nothing is accepted that was not
stored. A lost connection is retried once, on a new one, only when that one shows none
of the batch's nonces stored. Every method runs on the serving event loop; the writer
follows the loop it is called on (a test client's loop, a restarted server).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.errors import AuthError, RevokedError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

#: expired nonces are deleted at most this often (seconds)
SWEEP_SECONDS = 1.0
#: the heartbeat fields of the presence row, in the order of ``HeartbeatIn``
REPORTED = ("agent_version", "os_version", "slot", "uptime_seconds", "log_backlog")
_SQL_TYPE = {
    "agent_version": "varchar",
    "os_version": "varchar",
    "slot": "varchar",
    "uptime_seconds": "integer",
    "log_backlog": "integer",
}

_INSERT = """
INSERT INTO device_request_nonces (device_id, nonce, expires_at)
SELECT v.device_id, v.nonce, v.expires_at
FROM unnest(CAST(%(ids)s AS varchar[]), CAST(%(nonces)s AS varchar[]),
            CAST(%(expires)s AS timestamp[])) AS v(device_id, nonce, expires_at)
JOIN devices d ON d.id = v.device_id AND d.status = 'active'
ON CONFLICT DO NOTHING
RETURNING device_id, nonce"""
_SWEEP = "DELETE FROM device_request_nonces WHERE expires_at < %(now)s"
_STATUS = "SELECT id, status FROM devices WHERE id = ANY(CAST(%(ids)s AS varchar[]))"
_ANY_STORED = """
SELECT 1 FROM device_request_nonces n
JOIN unnest(CAST(%(ids)s AS varchar[]), CAST(%(nonces)s AS varchar[])) AS v(device_id, nonce)
  ON n.device_id = v.device_id AND n.nonce = v.nonce
LIMIT 1
"""
# The heartbeats whose nonce the same statement stored (``ins``), one per device: what
# the device row and the pending count are computed from.
_BEATS = """beats AS (
  SELECT b.* FROM unnest(CAST(%(b_id)s AS varchar[]), CAST(%(b_nonce)s AS varchar[]),
                         CAST(%(b_at)s AS timestamp[]), CAST(%(b_agent)s AS varchar[]),
                         CAST(%(b_os)s AS varchar[]), CAST(%(b_versions)s AS boolean[]),
                         CAST(%(b_due)s AS boolean[]))
    AS b(id, nonce, at, agent, os, versions, due)
  JOIN ins ON ins.device_id = b.id AND ins.nonce = b.nonce)"""
# A reported version that differs replaces the stored one (when the caller could not
# rule it out); ``last_seen_at`` by the presence rule of ADR 0045 (when due).
_SEEN_DUE = (
    "b.due AND (d.last_seen_at IS NULL"
    " OR d.last_seen_at <= b.at - make_interval(secs => %(resolution)s))"
)
# both interpolations are the constant above
_DEVICES = f"""upd AS (
  UPDATE devices AS d SET
    agent_version = CASE WHEN b.versions THEN COALESCE(b.agent, d.agent_version)
                         ELSE d.agent_version END,
    os_version = CASE WHEN b.versions THEN COALESCE(b.os, d.os_version) ELSE d.os_version END,
    last_seen_at = CASE WHEN {_SEEN_DUE} THEN b.at ELSE d.last_seen_at END
  FROM beats b
  WHERE d.id = b.id AND d.status = 'active'
    AND ((b.versions AND (d.agent_version IS DISTINCT FROM COALESCE(b.agent, d.agent_version)
                          OR d.os_version IS DISTINCT FROM COALESCE(b.os, d.os_version)))
         OR ({_SEEN_DUE}))
  RETURNING d.id, b.versions AND (b.agent IS NOT NULL OR b.os IS NOT NULL) AS changed)"""  # noqa: S608
_PENDING = """pend AS (
  SELECT c.device_id, count(*) AS n FROM device_commands c JOIN beats b ON c.device_id = b.id
  WHERE c.status = ANY(CAST(%(open)s AS varchar[])) AND c.expires_at > %(now)s
  GROUP BY c.device_id)"""
_FOUND = """
SELECT 'n', device_id, nonce, 0::bigint FROM ins
UNION ALL SELECT 'v', id, NULL, 0 FROM upd WHERE changed
UNION ALL SELECT 'p', device_id, NULL, n FROM pend"""

#: (device id, nonce)
Row = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Signed:
    """One verified request's writes: its nonce, when it expires, and for a heartbeat
    what the agent reported (the fields it sent, as ``HeartbeatIn`` dumps them unset
    excluded) and when."""

    device_id: str
    nonce: str
    expires_at: dt.datetime
    at: dt.datetime
    report: Mapping[str, Any] | None = None
    #: the heartbeat may change the device row's versions (False: it reports the ones
    #: the caller knows the row holds)
    versions: bool = True
    #: the device's ``last_seen_at`` may be due (False: the caller knows it is recent)
    presence: bool = True


@dataclass(slots=True)
class Stored:
    """What a flush found: the (device, nonce) stored, the refusals of the others, the
    pending command count of each heartbeat's device, and the devices whose versions
    the heartbeats changed."""

    new: set[Row] = field(default_factory=set)
    refused: dict[Row, Exception] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)


def _naive(at: dt.datetime) -> dt.datetime:
    """``at`` as the tables store it: naive UTC (UtcDateTime)."""
    return at.astimezone(dt.UTC).replace(tzinfo=None)


async def store(
    conn: AsyncConnection[Any],
    batch: Sequence[Signed],
    now: dt.datetime,
    sweep: bool,
    resolution: float,
) -> Stored:
    """Write ``batch`` (each (device, nonce) once, at most one heartbeat per device) with
    one statement on ``conn``, in autocommit (module docstring); first, when ``sweep``,
    delete every nonce expired at ``now``. ``resolution``: the presence rule's seconds
    (ADR 0045)."""
    out = Stored()
    if sweep:
        await conn.execute(_SWEEP, {"now": _naive(now)})
    if not batch:
        return out
    params: dict[str, Any] = {
        "ids": [s.device_id for s in batch],
        "nonces": [s.nonce for s in batch],
        "expires": [_naive(s.expires_at) for s in batch],
    }
    beats = [s for s in batch if s.report is not None]
    if not beats:
        result = await conn.execute(_INSERT, params)
        out.new = {(str(a), str(b)) for a, b in await result.fetchall()}
    else:
        query, more = _with_heartbeats(beats, now, resolution)
        result = await conn.execute(query, params | more)
        for kind, device, nonce, count in await result.fetchall():
            if kind == "n":
                out.new.add((str(device), str(nonce)))
            elif kind == "v":
                out.changed.add(str(device))
            else:
                out.pending[str(device)] = int(count)
        for s in beats:
            if (s.device_id, s.nonce) in out.new:
                out.pending.setdefault(s.device_id, 0)
    await _refusals(conn, batch, out)
    return out


def _with_heartbeats(
    beats: Sequence[Signed], now: dt.datetime, resolution: float
) -> tuple[str, dict[str, Any]]:
    """The one statement of a batch with heartbeats, and its parameters beyond the
    nonces': the nonces stored (``ins``), each field set's presence upsert of the
    heartbeats among them, their devices' versions and ``last_seen_at``, their pending
    command counts."""
    from bastion.server.channel.models import CommandStatus

    params: dict[str, Any] = {
        "b_id": [s.device_id for s in beats],
        "b_nonce": [s.nonce for s in beats],
        "b_at": [_naive(s.at) for s in beats],
        "b_agent": [_report(s).get("agent_version") or None for s in beats],
        "b_os": [_report(s).get("os_version") or None for s in beats],
        "b_versions": [s.versions for s in beats],
        "b_due": [s.presence for s in beats],
        "resolution": resolution,
        "open": list(CommandStatus.OPEN),
        "now": _naive(now),
    }
    groups: dict[tuple[str, ...], list[Signed]] = {}
    for s in beats:
        groups.setdefault(tuple(n for n in REPORTED if n in _report(s)), []).append(s)
    ctes = [f"ins AS ({_INSERT})", _BEATS]
    for i, (names, members) in enumerate(groups.items()):
        ctes.append(f"p{i} AS ({_presence_upsert(names, f'p{i}_')})")
        params |= _presence_params(names, members, f"p{i}_")
    ctes += [_DEVICES, _PENDING]
    return "WITH " + ",\n".join(ctes) + _FOUND, params


def _report(s: Signed) -> Mapping[str, Any]:
    assert s.report is not None
    return s.report


async def _refusals(conn: AsyncConnection[Any], batch: Sequence[Signed], out: Stored) -> None:
    refused = [s for s in batch if (s.device_id, s.nonce) not in out.new]
    if not refused:
        return
    from bastion.server.agent.service import replayed

    ids = sorted({s.device_id for s in refused})
    found = await conn.execute(_STATUS, {"ids": ids})
    status = {str(i): str(st) for i, st in await found.fetchall()}
    for s in refused:
        known = status.get(s.device_id)
        out.refused[s.device_id, s.nonce] = (
            AuthError(f"device {s.device_id} no longer exists")
            if known is None
            else RevokedError(f"device {s.device_id} is revoked")
            if known != "active"
            else replayed(s.device_id, s.nonce)
        )


def _presence_upsert(names: tuple[str, ...], prefix: str) -> str:
    """The upsert of the presence rows of heartbeats reporting exactly ``names`` whose
    nonce ``ins`` stored (a new row: not connected); parameters named ``prefix`` + column."""
    columns = ("device_id", "nonce", "heartbeat_at", *names)
    types = ("varchar", "varchar", "timestamp", *(_SQL_TYPE[n] for n in names))
    arrays = ", ".join(
        f"CAST(%({prefix}{c})s AS {t}[])" for c, t in zip(columns, types, strict=True)
    )
    stored = ("device_id", "heartbeat_at", *names)
    updates = ", ".join(f"{n} = excluded.{n}" for n in stored[1:])
    # the names are REPORTED's; every value is bound
    return (
        f"INSERT INTO device_presence (connected, {', '.join(stored)}) "  # noqa: S608
        f"SELECT false, {', '.join(f'g.{c}' for c in stored)} "
        f"FROM unnest({arrays}) AS g({', '.join(columns)}) "
        "JOIN ins ON ins.device_id = g.device_id AND ins.nonce = g.nonce "
        f"ON CONFLICT (device_id) DO UPDATE SET {updates}"
    )


def _presence_params(
    names: tuple[str, ...], members: Sequence[Signed], prefix: str
) -> dict[str, Any]:
    params: dict[str, Any] = {
        f"{prefix}device_id": [s.device_id for s in members],
        f"{prefix}nonce": [s.nonce for s in members],
        f"{prefix}heartbeat_at": [_naive(s.at) for s in members],
    }
    for name in names:
        params[f"{prefix}{name}"] = [_report(s)[name] for s in members]
    return params


#: apply payloads to this process's answer cache (``Listener.changed_here``)
Changed = Callable[[Iterable[str]], None]


#: application_name of the writer's connection (find it in pg_stat_activity)
WRITER_APP_NAME = "bastion-signed-writer"


class SignedWriter:
    """Group commit of signed requests' writes for one process (module docstring), on its
    own connection (psycopg, on the serving loop: no worker thread, no ORM). A flush that
    fails closes it; the next flush connects again."""

    def __init__(
        self,
        database_url: str,
        keep: dt.timedelta,
        resolution: float,
        changed: Changed | None = None,
    ) -> None:
        from bastion.server.bus_pg import libpq_url

        self._url = libpq_url(database_url)
        self._keep = keep
        self._resolution = resolution
        self._changed = changed
        #: (device, nonce) -> (the request's writes, its waiter)
        self._queue: dict[Row, tuple[Signed, asyncio.Future[int | None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._conn: AsyncConnection[Any] | None = None
        self._swept = float("-inf")
        #: flushes run, nonces stored, connections made (tests, benchmarks, /metrics)
        self.flushes = 0
        self.stored = 0
        self.connects = 0
        #: flushes sent again on a new connection (the old one was lost before COMMIT)
        self.retries = 0

    async def remember(
        self,
        device_id: str,
        nonce: str,
        now: dt.datetime,
        report: Mapping[str, Any] | None = None,
        *,
        versions: bool = True,
        presence: bool = True,
    ) -> int | None:
        """Return once ``nonce`` of ``device_id`` is stored, with the heartbeat ``report``
        if given: then the number of commands pending for the device, else None.
        ``versions``/``presence`` False: the caller knows the heartbeat changes neither
        the device row's versions nor a due ``last_seen_at`` (those statements skip it).
        AuthError if the device used the nonce before or no longer exists, RevokedError
        if it was revoked; the database's error if the flush failed."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop: nothing of the old one is used
            self._loop, self._queue, self._flushing, self._conn = loop, {}, None, None
        row = (device_id, nonce)
        if row in self._queue:
            from bastion.server.agent.service import replayed

            raise replayed(device_id, nonce)
        waiter: asyncio.Future[int | None] = loop.create_future()
        signed = Signed(device_id, nonce, now + self._keep, now, report, versions, presence)
        self._queue[row] = (signed, waiter)
        if self._flushing is None or self._flushing.done():
            self._flushing = loop.create_task(self._flush(), name="bastion-signed-writes")
        return await waiter

    async def _connection(self) -> AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            import psycopg

            self._conn = await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                application_name=WRITER_APP_NAME,
                connect_timeout=5,
            )
            self.connects += 1
        return self._conn

    async def _flush(self) -> None:
        while self._queue:
            batch = self._take()
            signed = [s for s, _ in batch.values()]
            now = max(s.at for s in signed)
            sweep = time.monotonic() - self._swept >= SWEEP_SECONDS
            try:
                out = await self._store(signed, now, sweep)
            except Exception as exc:
                await self._drop_connection()
                _fail(batch.values(), exc)
                continue
            except BaseException:
                _fail(batch.values(), RuntimeError("the signed request writer was stopped"))
                raise
            if sweep:
                self._swept = time.monotonic()
            self.flushes += 1
            self.stored += len(out.new)
            if out.changed and self._changed is not None:
                self._changed(out.changed)
            for (device, nonce), (s, waiter) in batch.items():
                if waiter.done():  # the request was cancelled (client gone)
                    continue
                refusal = out.refused.get((device, nonce))
                if refusal is not None:
                    waiter.set_exception(refusal)
                else:
                    waiter.set_result(out.pending.get(device) if s.report is not None else None)

    def _take(self) -> dict[Row, tuple[Signed, asyncio.Future[int | None]]]:
        """The next batch: everything queued, in order, but a second heartbeat of a
        device, which stays queued for the next flush (one statement writes a device's
        presence row once)."""
        batch: dict[Row, tuple[Signed, asyncio.Future[int | None]]] = {}
        rest: dict[Row, tuple[Signed, asyncio.Future[int | None]]] = {}
        beating: set[str] = set()
        for row, item in self._queue.items():
            if item[0].report is not None:
                if item[0].device_id in beating:
                    rest[row] = item
                    continue
                beating.add(item[0].device_id)
            batch[row] = item
        self._queue = rest
        return batch

    async def _store(self, signed: Sequence[Signed], now: dt.datetime, sweep: bool) -> Stored:
        """:func:`store` on the writer's connection; once more on a new connection when
        the one held was lost and the new one shows that none of the batch's nonces was
        stored (a server restart, a backend killed while idle: the statement never ran,
        so the same writes are safe to send again). If any was, the outcome is unknown
        and the flush fails."""
        import psycopg

        for attempt in (1, 2):
            try:
                return await store(await self._connection(), signed, now, sweep, self._resolution)
            except psycopg.OperationalError:
                await self._drop_connection()
                if attempt == 2 or not await self._none_stored(signed):
                    raise
                self.retries += 1
        raise AssertionError("unreachable")  # pragma: no cover

    async def _none_stored(self, signed: Sequence[Signed]) -> bool:
        """Whether a new connection finds none of ``signed``'s nonces stored (False when
        it cannot tell)."""
        import psycopg

        try:
            conn = await self._connection()
            found = await conn.execute(
                _ANY_STORED,
                {"ids": [s.device_id for s in signed], "nonces": [s.nonce for s in signed]},
            )
            return await found.fetchone() is None
        except psycopg.Error:
            await self._drop_connection()
            return False

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Close the connection (the app stops; a later request connects again)."""
        task = self._flushing
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await task
        await self._drop_connection()


def _fail(waiting: Iterable[tuple[Signed, asyncio.Future[int | None]]], exc: Exception) -> None:
    for _, waiter in waiting:
        if not waiter.done():
            waiter.set_exception(exc)


class SignedWriterCollector:
    """This process's signed request writer for ``/metrics`` (read at scrape time)."""

    def __init__(self, writer: SignedWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        writer = self.writer
        counts = CounterMetricFamily(
            "bastion_signed_writes",
            "This process's group commit of signed device requests (ADR 0048) by event",
            labels=["event"],
        )
        for event, value in (
            ("flush", writer.flushes),
            ("nonce_stored", writer.stored),
            ("connect", writer.connects),
            ("retry", writer.retries),
        ):
            counts.add_metric([event], value)
        yield counts
