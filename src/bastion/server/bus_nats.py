"""The NATS bus: notices between server processes through a NATS server (nats-py).

The alternative to PostgreSQL LISTEN/NOTIFY for several server processes
(docs/adr/0034-scale-and-webhooks.md, "NATS bus"): chosen by ``bus_backend = "nats"``
and ``nats_url`` (``bastion server --bus nats://127.0.0.1:4222``). Implements
:class:`bastion.server.bus.Bus` with PgBus's semantics: notices are hints (the database
stays the truth), publishing is best effort, a lost connection is reported to every
subscriber as ``None`` and healed, and a closed bus starts afresh on its next use.

* **Subjects.** A bus channel maps to one subject, ``<prefix>.<token>.<token>...``: the
  channel is split at ``:`` (``device:<id>`` -> ``bastion.device.<id>``) and each part
  is escaped so that only ``A-Z a-z 0-9 -`` stay as they are; every other byte of its
  UTF-8 form (``.``, ``*``, ``>``, spaces, ``_`` itself, ...) becomes ``_HH`` (upper-case
  hex) and an empty part is ``_``. No channel can name a wildcard, add a token or
  reach another channel's subject: :func:`subject_of` is injective and
  :func:`channel_of` inverts it exactly (non-canonical subjects are refused).
* **Interest, not broadcast.** Each process subscribes only to the channels it has
  subscribers for (one NATS subscription per channel, dropped with its last local
  subscriber), so a notice reaches only the process holding that device's socket;
  LISTEN/NOTIFY sends every notice to every process.
* Each process dispatches what it receives through an inner
  :class:`~bastion.server.bus.LocalBus`: the bounded queue per subscriber and the
  ``None`` overflow notice are the embedded bus's. The NATS subscription's own buffer
  (:data:`SUB_PENDING_MSGS`, :data:`SUB_PENDING_BYTES`) only hands notices over and is
  larger than the local queue; should it overflow too, the subscribers get ``None``.
* **One connection per process**, opened on first use in the running event loop by a
  supervisor task. nats-py re-establishes a lost connection (its subscriptions are
  replayed) with exponential backoff and jitter (:data:`RECONNECT_MIN` to
  :data:`RECONNECT_MAX` seconds); every subscriber gets ``None`` when the connection is
  lost and again when it is back (notices sent meanwhile may be gone: re-read the
  state). Should the client close for good, the supervisor starts a new one.
* **Publishing** never waits for a broker that is down: while the connection is being
  re-established a notice is buffered by the client (at most :data:`PENDING_MAX` bytes)
  and sent on reconnect; with no connection at all, or a full buffer, it raises
  :class:`~bastion.errors.BackendError` naming the server (without credentials). The
  caller has committed already and goes on (``channel.routes.notify``).
* Received notices over :data:`~bastion.limits.BUS_MESSAGE_MAX_SIZE` bytes, not UTF-8,
  or on a subject that is not a canonical channel are dropped with a warning.
* Plain ``nats://`` is accepted only to a loopback host (the local NATS next to the
  server); anything else must be ``tls://`` (verified against the system CAs), so
  device ids never cross a network in clear and a stranger on it cannot inject
  notices. Credentials may ride in the URL (``tls://user:pass@host:4222``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import string
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bastion.errors import BackendError, ConfigError, FormatError
from bastion.io.http import is_loopback
from bastion.limits import BUS_MESSAGE_MAX_SIZE, BUS_QUEUE_MAX
from bastion.server.bus import LocalBus, Subscription, check_notice

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client
    from nats.aio.msg import Msg

DEFAULT_PREFIX = "bastion"
PREFIX_MAX_SIZE = 64
RECONNECT_MIN = 0.05
RECONNECT_MAX = 5.0
#: seconds between attempts while the first connection cannot be made
FIRST_CONNECT_WAIT = 1.0
CONNECT_TIMEOUT = 2
#: a silent server is declared lost after PING_SECONDS * (MAX_OUTSTANDING_PINGS + 1)
PING_SECONDS = 20
MAX_OUTSTANDING_PINGS = 2
#: bytes a process buffers for publishing while its connection is re-established
PENDING_MAX = 256 * 1024
#: the hand-over buffer between a NATS subscription and the local queue: larger than
#: BUS_QUEUE_MAX, so overflow normally lands in the local queue (which keeps the newest)
SUB_PENDING_MSGS = 16 * BUS_QUEUE_MAX
SUB_PENDING_BYTES = 8 * 1024 * 1024
#: seconds a new subscription waits for the server to confirm it
SUBSCRIBE_CONFIRM_SECONDS = 2.0
#: times, and seconds each, close() cancels the connection task before leaving it behind
STOP_TRIES = 20
STOP_WAIT = 0.25
#: the connection's name (``nats server report connections``, /connz)
CLIENT_NAME = "bastion-bus"

_SAFE = frozenset(string.ascii_letters + string.digits + "-")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_HEX = frozenset("0123456789ABCDEF")

log = logging.getLogger(__name__)


def check_prefix(prefix: str) -> str:
    """The subject prefix, when it is dot-separated tokens of ``A-Z a-z 0-9 _ -``."""
    if len(prefix.encode()) > PREFIX_MAX_SIZE or not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"NATS subject prefix {prefix[:40]!r}: expected tokens of A-Z a-z 0-9 _ - "
            f"separated by '.', at most {PREFIX_MAX_SIZE} bytes"
        )
    return prefix


def _token(part: str) -> str:
    if not part:
        return "_"
    out: list[str] = []
    for ch in part:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"_{b:02X}" for b in ch.encode())
    return "".join(out)


def _untoken(token: str) -> bytes:
    if token == "_":
        return b""
    out = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch in _SAFE:
            out += ch.encode()
            i += 1
        elif ch == "_" and len(token) >= i + 3 and set(token[i + 1 : i + 3]) <= _HEX:
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raise FormatError(f"bus subject token {token[:40]!r} is not an escaped channel part")
    return bytes(out)


def subject_of(prefix: str, channel: str) -> str:
    """The NATS subject of a bus channel (module docstring: one subject per channel)."""
    return prefix + "." + ".".join(_token(part) for part in channel.split(":"))


def channel_of(prefix: str, subject: str) -> str:
    """The bus channel of a subject made by :func:`subject_of`; FormatError otherwise."""
    head = prefix + "."
    if not subject.startswith(head) or len(subject) == len(head):
        raise FormatError(f"bus subject {subject[:60]!r} is not under {prefix!r}")
    try:
        parts = [_untoken(t).decode() for t in subject[len(head) :].split(".")]
    except UnicodeDecodeError as exc:
        raise FormatError(f"bus subject {subject[:60]!r} does not escape UTF-8") from exc
    channel = ":".join(parts)
    if subject_of(prefix, channel) != subject:  # e.g. "_41" for "A", lower-case hex
        raise FormatError(f"bus subject {subject[:60]!r} is not in canonical form")
    return channel


def check_nats_url(url: str) -> str:
    """``nats://`` (loopback only) or ``tls://`` with a host; ConfigError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"NATS URL {redact_url(url)!r}: {exc}") from exc
    if parts.scheme not in ("nats", "tls") or not parts.hostname:
        raise ConfigError(
            f"NATS URL {redact_url(url)!r}: expected nats://HOST:PORT (loopback) or tls://HOST:PORT"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or port == 0:
        raise ConfigError(f"NATS URL {redact_url(url)!r}: only scheme, host and port")
    if parts.scheme == "nats" and not is_loopback(parts.hostname):
        raise ConfigError(
            f"refusing plain nats:// to non-loopback host {parts.hostname!r}: notices would "
            "cross the network in clear and unauthenticated; use tls://HOST:PORT"
        )
    return url


def redact_url(url: str) -> str:
    """``scheme://host:port`` of a NATS URL (user, password and token dropped)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed NATS URL>"
    return f"{parts.scheme}://{host}{port}"


def _reconnect_delay(servers: list[Any], _info: dict[str, Any]) -> tuple[None, float]:
    """nats-py's reconnect hook: exponential backoff with jitter, any server of the pool."""
    tries = min((s.reconnects for s in servers), default=0)
    delay = min(RECONNECT_MAX, RECONNECT_MIN * 2 ** min(tries, 16))
    return None, delay * (0.5 + random.random())


class _NatsSubscription:
    """A local subscription whose close also drops this process's interest in NATS."""

    def __init__(self, bus: NatsBus, channel: str, inner: Subscription) -> None:
        self._bus = bus
        self.channel = channel
        self._inner = inner
        self._closed = False

    @property
    def queue(self) -> asyncio.Queue[str | None]:
        """The bounded queue of the local subscription (diagnostics and tests)."""
        queue: asyncio.Queue[str | None] = self._inner.queue  # type: ignore[attr-defined]
        return queue

    def __aiter__(self) -> AsyncIterator[str | None]:
        return self._inner.__aiter__()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._inner.close()
            await self._bus._release(self.channel)


class NatsBus:
    """Fan-out through a NATS server for several server processes (module docstring)."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX) -> None:
        self._url = check_nats_url(url)
        self._shown = redact_url(url)
        self._prefix = check_prefix(prefix)
        self._local = LocalBus()
        self._counts: dict[str, int] = {}  # channel -> local subscribers
        self._subs: dict[str, Any] = {}  # channel -> its NATS subscription
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._lock: asyncio.Lock | None = None
        self._closing = False
        #: times a connection was (re)established; tests and diagnostics
        self.connects = 0

    # -- the connection -------------------------------------------------------------------

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is not loop:
            assert self._loop is not None
            if self._loop.is_running():
                raise BackendError(f"the NATS bus ({self._shown}) runs in another event loop")
            self._forget()  # that loop is gone (an app served again): start afresh here
        if self._closing:
            raise BackendError(f"the NATS bus ({self._shown}) is closing")
        if self._task is None:
            self._loop = loop
            self._ready = asyncio.Event()
            self._lock = asyncio.Lock()
            self._task = loop.create_task(self._run())
        await self._ready.wait()

    async def _run(self) -> None:
        """Keep one client connected; a client that closes for good is replaced."""
        delay = RECONNECT_MIN
        while True:
            if await self._one_client():
                delay = RECONNECT_MIN
            self._local.interrupt()
            self._ready.set()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(RECONNECT_MAX, delay * 2)

    async def _one_client(self) -> bool:
        """Connect (nats-py retries until it can), serve until the client closes for good;
        whether it ever connected."""
        import nats
        from nats.errors import SlowConsumerError

        closed = asyncio.Event()
        last_error: list[str] = []

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, SlowConsumerError):  # notices dropped before dispatch
                self._local.interrupt()
            text = str(exc) or type(exc).__name__
            if last_error != [text]:
                log.warning("bus: NATS at %s: %s", self._shown, text)
                last_error[:] = [text]
            self._ready.set()  # callers waiting on the first connection go on

        async def on_disconnected() -> None:
            if self._client is not None:
                log.warning("bus: NATS at %s lost; reconnecting", self._shown)
                self._local.interrupt()

        async def on_reconnected() -> None:
            self.connects += 1
            last_error.clear()
            log.info("bus: NATS at %s reconnected", self._shown)
            self._local.interrupt()  # notices of the gap may be gone: re-read

        async def on_closed() -> None:
            closed.set()

        client: Client | None = None
        try:
            client = await nats.connect(
                servers=[self._url],
                name=CLIENT_NAME,
                connect_timeout=CONNECT_TIMEOUT,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=FIRST_CONNECT_WAIT,
                reconnect_to_server_handler=_reconnect_delay,
                ping_interval=PING_SECONDS,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                pending_size=PENDING_MAX,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed,
            )
            self._client = client
            self.connects += 1
            last_error.clear()
            assert self._lock is not None
            async with self._lock:  # the channels subscribed before this client
                deferred = [c for c in self._counts if c not in self._subs]
                for channel in deferred:
                    await self._nats_subscribe(client, channel)
            if self.connects > 1 or deferred:
                # a new client after a closed one, or subscribers that went on before the
                # first connection was up (a slow or failed first attempt sets _ready):
                # notices published meanwhile never reached them, so they re-read
                self._local.interrupt()
            self._ready.set()
            await closed.wait()
            log.warning("bus: NATS client for %s closed; starting a new one", self._shown)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # anything nats-py does not retry itself
            log.warning("bus: NATS at %s: %s", self._shown, exc)
        finally:
            self._client = None
            self._subs.clear()
            if client is not None and not client.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.flush(timeout=1), 1.5)
                with contextlib.suppress(Exception):
                    await client.close()
        return client is not None

    async def _nats_subscribe(self, client: Client, channel: str) -> None:
        try:
            self._subs[channel] = await client.subscribe(
                subject_of(self._prefix, channel),
                cb=self._on_message,
                pending_msgs_limit=SUB_PENDING_MSGS,
                pending_bytes_limit=SUB_PENDING_BYTES,
            )
        except Exception as exc:  # a closing client: the next one subscribes again
            log.warning("bus: subscribing to %r at %s deferred: %s", channel, self._shown, exc)

    async def _on_message(self, msg: Msg) -> None:
        try:
            channel = channel_of(self._prefix, msg.subject)
            if len(msg.data) > BUS_MESSAGE_MAX_SIZE:
                raise FormatError(f"bus notice on {channel!r} is over {BUS_MESSAGE_MAX_SIZE} bytes")
            try:
                message = msg.data.decode()
            except UnicodeDecodeError as exc:
                raise FormatError(f"bus notice on {channel!r} is not UTF-8") from exc
            await self._local.publish(channel, message)
        except FormatError as exc:
            log.warning("bus: ignored a notice: %s", exc)

    async def _stop(self, task: asyncio.Task[None]) -> None:
        """Cancel the supervisor; again if nats-py swallowed a cancellation (it does while
        it retries a connection), so a bus whose server is down still closes promptly."""
        for _ in range(STOP_TRIES):
            task.cancel()
            done, _pending = await asyncio.wait({task}, timeout=STOP_WAIT)
            if done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
                return
        log.warning("bus: the NATS connection to %s did not stop; left behind", self._shown)

    def _forget(self) -> None:
        """Drop every reference to a connection whose event loop is gone."""
        self._task = None
        self._loop = None
        self._client = None
        self._subs.clear()
        self._counts.clear()
        self._lock = None
        self._local = LocalBus()

    # -- the Bus protocol -----------------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        """Send ``message`` to every subscriber of ``channel`` in any process (this one
        included); BackendError when NATS cannot take it (module docstring)."""
        check_notice(channel, message)
        loop = asyncio.get_running_loop()
        owner = self._loop
        if (
            self._task is not None
            and owner is not None
            and owner is not loop
            and owner.is_running()
        ):
            # e.g. a test client's event loop beside the served app's: publish in the owner
            done = asyncio.run_coroutine_threadsafe(self.publish(channel, message), owner)
            await asyncio.wrap_future(done)
            return
        await self._start()
        client = self._client
        if client is None or client.is_closed:
            raise BackendError(
                f"bus: NATS at {self._shown} is unreachable; notice on {channel!r} not sent"
            )
        try:
            await client.publish(subject_of(self._prefix, channel), message.encode())
        except Exception as exc:  # closed, draining, or the reconnect buffer is full
            raise BackendError(
                f"bus: NATS at {self._shown} did not take the notice on {channel!r}: "
                f"{exc or type(exc).__name__}"
            ) from exc

    async def subscribe(self, channel: str) -> Subscription:
        """Receive ``channel``'s notices from every process; the server knows of the
        interest before this returns (when it is reachable)."""
        check_notice(channel, "")
        await self._start()
        assert self._lock is not None
        async with self._lock:
            inner = await self._local.subscribe(channel)
            self._counts[channel] = self._counts.get(channel, 0) + 1
            client = self._client
            if channel not in self._subs and client is not None and not client.is_closed:
                await self._nats_subscribe(client, channel)
        # one round trip (outside the lock: channels opening at once wait in parallel), so
        # a notice published after this returns is routed here by the server
        if client is not None and client.is_connected:
            with contextlib.suppress(Exception):  # a SUB not confirmed is replayed on reconnect
                await client.flush(timeout=SUBSCRIBE_CONFIRM_SECONDS)  # type: ignore[arg-type]
        return _NatsSubscription(self, channel, inner)

    async def _release(self, channel: str) -> None:
        if self._lock is None:
            return  # the bus was closed or forgotten meanwhile
        async with self._lock:
            left = self._counts.get(channel, 0) - 1
            if left > 0:
                self._counts[channel] = left
                return
            self._counts.pop(channel, None)
            sub = self._subs.pop(channel, None)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def close(self) -> None:
        """Close the connection and every subscription; a later publish or subscribe
        starts afresh."""
        loop = asyncio.get_running_loop()
        owner = self._loop
        if self._task is not None and owner is not None and owner is not loop:
            if owner.is_running():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.close(), owner))
            else:
                self._forget()
            return
        self._closing = True
        try:
            if self._task is not None:
                await self._stop(self._task)
            await self._local.close()
        finally:
            self._forget()
            self._closing = False
