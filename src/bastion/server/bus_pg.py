"""The PostgreSQL bus: notices between server processes through LISTEN/NOTIFY.

The default fan-out of a PostgreSQL deployment (docs/adr/0034-scale-and-webhooks.md):
no broker besides the database every process already uses. Implements
:class:`bastion.server.bus.Bus`.

* Every notice goes to one PostgreSQL channel, :data:`PG_CHANNEL`, with the bus channel
  in the payload (``<len>:<channel><message>``), so bus channels are not bound by SQL
  identifier rules and each process holds a single ``LISTEN``.
* Each process dispatches what it hears through an inner
  :class:`~bastion.server.bus.LocalBus`: ordering per publisher, the bounded queue per
  subscriber and the ``None`` overflow notice are exactly the embedded bus's.
* Two connections per process, opened on first use in the running event loop: one
  listens, one publishes (``SELECT pg_notify(...)``, autocommit).
* When the listening connection drops, every subscriber gets ``None`` (notices may have
  been lost: re-read the state) and the listener reconnects with exponential backoff
  and jitter (:data:`RECONNECT_MIN` to :data:`RECONNECT_MAX` seconds).
* A publish on a broken connection reconnects once; if that fails too it raises
  :class:`~bastion.errors.BackendError` naming the database (redacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from bastion.errors import BackendError, FormatError
from bastion.server.bus import LocalBus, Subscription, check_notice

PG_CHANNEL = "bastion_bus"
RECONNECT_MIN = 0.05
RECONNECT_MAX = 5.0
#: application_name of the listening connection (operators can find it in pg_stat_activity)
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
PG_NOTIFY_MAX = 7999
LISTEN_APP_NAME = "bastion-bus-listen"
PUBLISH_APP_NAME = "bastion-bus-publish"

log = logging.getLogger(__name__)


def libpq_url(sqlalchemy_url: str) -> str:
    """A libpq connection URI for a SQLAlchemy PostgreSQL URL (driver suffix dropped)."""
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_url)
    if not url.drivername.startswith("postgresql"):
        raise BackendError(f"the PostgreSQL bus needs a PostgreSQL URL, not {url.drivername!r}")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def encode_payload(channel: str, message: str) -> str:
    """``<len(channel)>:<channel><message>``: the NOTIFY payload of one notice."""
    return f"{len(channel)}:{channel}{message}"


def decode_payload(payload: str) -> tuple[str, str]:
    """The (channel, message) of a payload; FormatError when it is not ours."""
    size, sep, rest = payload.partition(":")
    if not sep or not size.isdigit() or int(size) == 0 or int(size) > len(rest):
        raise FormatError(f"bus payload {payload[:40]!r} has no channel prefix")
    n = int(size)
    return rest[:n], rest[n:]


class PgBus:
    """LISTEN/NOTIFY fan-out for several server processes on one PostgreSQL database."""

    def __init__(self, database_url: str) -> None:
        self._url = libpq_url(database_url)
        from bastion.server.db.engine import redact

        self._shown = redact(database_url)
        self._local = LocalBus()
        self._listen_task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._publisher: Any = None
        self._publish_lock: asyncio.Lock | None = None
        self._closed = False
        #: times the listening connection was (re)established; tests and diagnostics
        self.connects = 0

    async def _connect(self, app_name: str) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name=app_name, connect_timeout=5
        )

    async def _start(self) -> None:
        if self._closed:
            raise BackendError("the PostgreSQL bus is closed")
        if self._listen_task is None:
            self._listening = asyncio.Event()
            self._listen_task = asyncio.create_task(self._listen_forever())
        await self._listening.wait()

    async def _listen_forever(self) -> None:
        delay = RECONNECT_MIN
        while not self._closed:
            conn = None
            try:
                conn = await self._connect(LISTEN_APP_NAME)
                await conn.execute(f"LISTEN {PG_CHANNEL}")
                self.connects += 1
                delay = RECONNECT_MIN
                self._listening.set()
                async for notice in conn.notifies():
                    await self._dispatch(notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # psycopg.OperationalError and friends: reconnect
                if self._closed:
                    return
                log.warning("bus: PostgreSQL listener lost (%s); reconnecting", exc)
                if self._listening.is_set():
                    self._local.interrupt()
                self._listening.set()  # callers waiting on the first connect go on
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(RECONNECT_MAX, delay * 2)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            if not self._closed:
                self._listening.clear()

    async def _dispatch(self, payload: str) -> None:
        try:
            channel, message = decode_payload(payload)
            await self._local.publish(channel, message)
        except FormatError as exc:
            log.warning("bus: ignored a notice: %s", exc)

    async def publish(self, channel: str, message: str) -> None:
        """NOTIFY every process (this one included) of ``message`` on ``channel``."""
        check_notice(channel, message)
        await self._start()
        if self._publish_lock is None:
            self._publish_lock = asyncio.Lock()
        payload = encode_payload(channel, message)
        if len(payload.encode()) > PG_NOTIFY_MAX:
            raise FormatError(
                f"bus message on {channel!r} is {len(payload.encode())} bytes with its channel, "
                f"PostgreSQL NOTIFY allows {PG_NOTIFY_MAX}"
            )
        async with self._publish_lock:
            for attempt in (1, 2):
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = await self._connect(PUBLISH_APP_NAME)
                    await self._publisher.execute("SELECT pg_notify(%s, %s)", (PG_CHANNEL, payload))
                    return
                except Exception as exc:  # a dropped connection: retry once on a new one
                    with contextlib.suppress(Exception):
                        if self._publisher is not None:
                            await self._publisher.close()
                    self._publisher = None
                    if attempt == 2:
                        raise BackendError(
                            f"bus: could not NOTIFY on {self._shown!r}: {exc}"
                        ) from exc

    async def subscribe(self, channel: str) -> Subscription:
        """Receive ``channel``'s notices from every process."""
        check_notice(channel, "")
        await self._start()
        return await self._local.subscribe(channel)

    async def close(self) -> None:
        """Stop listening, close both connections and every subscription; a later
        publish or subscribe starts afresh."""
        self._closed = True
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listen_task
            self._listen_task = None
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.close()
            self._publisher = None
        await self._local.close()
        # the app may start again in this process (a restarted server, an app reused by
        # tests): the next publish or subscribe reconnects
        self._local = LocalBus()
        self._publish_lock = None
        self._closed = False
