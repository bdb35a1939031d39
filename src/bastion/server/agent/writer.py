"""Signed requests' writes, group-committed (docs/adr/0048-signed-requests-on-the-hot-path.md).

:class:`SignedWriter` is how the hot path stores what a verified device request signature
writes: its nonce and, for ``POST /v1/device/heartbeat``, what the agent reported.
:meth:`SignedWriter.remember` queues the request and waits; one flush at a time takes
everything queued and writes it with :func:`store` in one transaction:

1. every :data:`SWEEP_SECONDS` at most, the expired nonces of every device go;
2. the nonces: ``INSERT ... SELECT FROM unnest(...) JOIN devices (active) ON CONFLICT DO
   NOTHING RETURNING``. A request whose row came back used a new nonce; any other is a
   replay, or its device was revoked or deleted meanwhile (one more query tells which).
   The table and its rule are the full path's (:func:`~.service.remember_nonce`): one
   row per device and nonce, kept :data:`~.service.NONCE_KEEP`, so either path refuses
   the other's replays, whichever process sees them;
3. the heartbeats whose nonce was new: their presence rows (one upsert per set of
   reported fields, usually one), the devices' ``agent_version``/``os_version`` where
   a reported one differs (``RETURNING`` names them: the caller drops their answers
   here at once), their ``last_seen_at`` by the presence rule of ADR 0045 (once a
   minute), and the commands pending for each device.

A flush runs on the writer's own PostgreSQL connection, with psycopg on the serving loop
(no worker thread, no ORM). A flush that fails fails every request it carried, and the
connection is closed (the next flush connects again); nothing is accepted that was not
stored. Every method runs on the serving event loop; the writer follows the loop it is
called on (a test client's loop, a restarted server).
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
RETURNING device_id, nonce
"""
_SWEEP = "DELETE FROM device_request_nonces WHERE expires_at < %(now)s"
_STATUS = "SELECT id, status FROM devices WHERE id = ANY(CAST(%(ids)s AS varchar[]))"
_VERSIONS = """
UPDATE devices AS d
SET agent_version = COALESCE(v.agent, d.agent_version), os_version = COALESCE(v.os, d.os_version)
FROM unnest(CAST(%(ids)s AS varchar[]), CAST(%(agents)s AS varchar[]),
            CAST(%(oses)s AS varchar[])) AS v(id, agent, os)
WHERE d.id = v.id AND d.status = 'active'
  AND (d.agent_version IS DISTINCT FROM COALESCE(v.agent, d.agent_version)
       OR d.os_version IS DISTINCT FROM COALESCE(v.os, d.os_version))
RETURNING d.id
"""
_PENDING = """
SELECT device_id, count(*) FROM device_commands
WHERE device_id = ANY(CAST(%(ids)s AS varchar[])) AND status = ANY(CAST(%(open)s AS varchar[]))
  AND expires_at > %(now)s
GROUP BY device_id
"""

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
    #: the COMMIT was about to be sent (a connection lost before that stored nothing,
    #: and the flush may be tried again)
    committing: bool = False


def _naive(at: dt.datetime) -> dt.datetime:
    """``at`` as the tables store it: naive UTC (UtcDateTime)."""
    return at.astimezone(dt.UTC).replace(tzinfo=None)


async def store(
    conn: AsyncConnection[Any],
    batch: Sequence[Signed],
    now: dt.datetime,
    sweep: bool,
    resolution: float,
    *,
    out: Stored | None = None,
) -> Stored:
    """Write ``batch`` (each (device, nonce) once) in one transaction on ``conn`` (module
    docstring); first, when ``sweep``, delete every nonce expired at ``now``.
    ``resolution``: the presence rule's seconds (ADR 0045); ``out``: where the findings
    go (the caller reads its ``committing`` after a failure)."""
    out = out if out is not None else Stored()
    async with conn.transaction():
        if sweep:
            await conn.execute(_SWEEP, {"now": _naive(now)})
        if not batch:
            return out
        result = await conn.execute(
            _INSERT,
            {
                "ids": [s.device_id for s in batch],
                "nonces": [s.nonce for s in batch],
                "expires": [_naive(s.expires_at) for s in batch],
            },
        )
        out.new = {(str(a), str(b)) for a, b in await result.fetchall()}
        await _refusals(conn, batch, out)
        beats = [s for s in batch if s.report is not None and (s.device_id, s.nonce) in out.new]
        if beats:
            await _heartbeats(conn, beats, now, resolution, out)
        out.committing = True
    return out


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


def _merged(beats: Iterable[Signed]) -> dict[str, tuple[dt.datetime, dict[str, Any]]]:
    """Device -> (its newest heartbeat time, the fields reported, later ones winning)."""
    merged: dict[str, tuple[dt.datetime, dict[str, Any]]] = {}
    for s in beats:
        at, fields = merged.get(s.device_id, (s.at, {}))
        assert s.report is not None
        merged[s.device_id] = (max(at, s.at), {**fields, **s.report})
    return merged


def _flagged(beats: Iterable[Signed], flag: str) -> set[str]:
    """The devices of ``beats`` with ``flag`` (``versions``/``presence``) set on any."""
    return {s.device_id for s in beats if getattr(s, flag)}


async def _heartbeats(
    conn: AsyncConnection[Any],
    beats: Sequence[Signed],
    now: dt.datetime,
    resolution: float,
    out: Stored,
) -> None:
    from bastion.server.answers import PRESENCE_UPDATE
    from bastion.server.channel.models import CommandStatus

    merged = _merged(beats)
    groups: dict[tuple[str, ...], list[str]] = {}
    for device, (_, fields) in merged.items():
        groups.setdefault(tuple(n for n in REPORTED if n in fields), []).append(device)
    for names, devices in groups.items():
        await conn.execute(_presence_upsert(names), _presence_params(names, devices, merged))
    may_change = _flagged(beats, "versions")
    versioned = [
        d
        for d, (_, f) in merged.items()
        if d in may_change and (f.get("agent_version") or f.get("os_version"))
    ]
    if versioned:
        changed = await conn.execute(
            _VERSIONS,
            {
                "ids": versioned,
                "agents": [merged[d][1].get("agent_version") or None for d in versioned],
                "oses": [merged[d][1].get("os_version") or None for d in versioned],
            },
        )
        out.changed = {str(i) for (i,) in await changed.fetchall()}
    due = [d for d in merged if d in _flagged(beats, "presence")]
    if due:
        await conn.execute(
            PRESENCE_UPDATE,
            {"ids": due, "ats": [_naive(merged[d][0]) for d in due], "resolution": resolution},
        )
    ids = list(merged)
    found = await conn.execute(
        _PENDING, {"ids": ids, "open": list(CommandStatus.OPEN), "now": _naive(now)}
    )
    counts = {str(device): int(count) for device, count in await found.fetchall()}
    out.pending = {d: int(counts.get(d, 0)) for d in ids}


def _presence_upsert(names: tuple[str, ...]) -> str:
    """The upsert of presence rows reporting exactly ``names`` (a new row: not connected)."""
    columns = ("device_id", "heartbeat_at", *names)
    types = ("varchar", "timestamp", *(_SQL_TYPE[n] for n in names))
    arrays = ", ".join(f"CAST(%({c})s AS {t}[])" for c, t in zip(columns, types, strict=True))
    updates = ", ".join(f"{n} = excluded.{n}" for n in columns[1:])
    # the names are REPORTED's; every value is bound
    return (
        f"INSERT INTO device_presence (connected, {', '.join(columns)}) "  # noqa: S608
        f"SELECT false, {', '.join(f'v.{c}' for c in columns)} "
        f"FROM unnest({arrays}) AS v({', '.join(columns)}) "
        f"ON CONFLICT (device_id) DO UPDATE SET {updates}"
    )


def _presence_params(
    names: tuple[str, ...],
    devices: Sequence[str],
    merged: Mapping[str, tuple[dt.datetime, dict[str, Any]]],
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "device_id": list(devices),
        "heartbeat_at": [_naive(merged[d][0]) for d in devices],
    }
    for name in names:
        params[name] = [merged[d][1][name] for d in devices]
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
            batch, self._queue = self._queue, {}
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

    async def _store(self, signed: Sequence[Signed], now: dt.datetime, sweep: bool) -> Stored:
        """:func:`store` on the writer's connection; once more on a new connection when
        the one held was lost before the COMMIT was sent (a server restart, a killed
        backend: nothing was stored, so the same writes are safe to send again)."""
        import psycopg

        for attempt in (1, 2):
            out = Stored()
            try:
                return await store(
                    await self._connection(), signed, now, sweep, self._resolution, out=out
                )
            except psycopg.OperationalError:
                await self._drop_connection()
                if attempt == 2 or out.committing:
                    raise
                self.retries += 1
        raise AssertionError("unreachable")  # pragma: no cover

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
