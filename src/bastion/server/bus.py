"""The server's message bus: fan-out of small notices between server processes.

Several server processes may share one database (PostgreSQL); a device's WebSocket is
held by one of them. When another process queues a command for that device, changes its
presence or revokes it, the process holding the socket must hear of it. The bus carries
such notices, never the data itself: a notice names what changed (``"device:<id>"``) and
the receiver reads the row from the database, which stays the one source of truth, so a
lost notice only delays delivery until the next poll.

:class:`Bus` is the protocol; :class:`LocalBus` is the embedded default (one process,
in-memory asyncio queues). Cross-process backends (NATS, PostgreSQL LISTEN/NOTIFY)
implement the same protocol (docs/adr, the fan-out decision).

Delivery is at-most-once and per subscriber: each subscription gets every notice
published on its channel after it subscribed, in order, through a bounded queue; a
subscriber that falls behind by more than ``BUS_QUEUE_MAX`` notices loses the oldest
(and is told so by a ``None`` notice, after which it must re-read its state).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from bastion.errors import FormatError
from bastion.limits import BUS_CHANNEL_MAX_SIZE, BUS_MESSAGE_MAX_SIZE, BUS_QUEUE_MAX


def check_notice(channel: str, message: str) -> None:
    """Refuse a channel or message over the bus limits (FormatError naming it)."""
    if not channel or len(channel.encode()) > BUS_CHANNEL_MAX_SIZE:
        raise FormatError(
            f"bus channel {channel[:40]!r} is empty or over {BUS_CHANNEL_MAX_SIZE} bytes"
        )
    if len(message.encode()) > BUS_MESSAGE_MAX_SIZE:
        raise FormatError(f"bus message on {channel!r} is over {BUS_MESSAGE_MAX_SIZE} bytes")


class Subscription(Protocol):
    """Notices on one channel; ``None`` means some were lost (re-read the state)."""

    def __aiter__(self) -> AsyncIterator[str | None]: ...

    async def close(self) -> None: ...


class Bus(Protocol):
    """Publish and subscribe to small notices by channel name."""

    async def publish(self, channel: str, message: str) -> None:
        """Send ``message`` to every current subscriber of ``channel`` (any process)."""
        ...

    async def subscribe(self, channel: str) -> Subscription:
        """Start receiving ``channel``'s notices (close the subscription when done)."""
        ...

    async def close(self) -> None:
        """Drop every subscription and connection."""
        ...


class _LocalSubscription:
    def __init__(self, bus: LocalBus, channel: str) -> None:
        self._bus = bus
        self.channel = channel
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False

    def offer(self, message: str) -> None:
        """Queue ``message``; when the queue is full, the oldest notices make room for a
        ``None`` (some were lost) and for ``message`` itself, which is never dropped."""
        if self.queue.qsize() >= BUS_QUEUE_MAX:
            while self.queue.qsize() > BUS_QUEUE_MAX - 2:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
            self.queue.put_nowait(None)
        self.queue.put_nowait(message)

    def offer_lost(self) -> None:
        if self.queue.qsize() >= BUS_QUEUE_MAX:
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[str | None]:
        while not self.closed:
            item = await self.queue.get()
            if self.closed:
                return
            yield item

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._drop(self)
            self.queue.put_nowait(None)


class LocalBus:
    """The in-process bus: one server process, no broker."""

    def __init__(self) -> None:
        self._subs: dict[str, set[_LocalSubscription]] = {}

    async def publish(self, channel: str, message: str) -> None:
        check_notice(channel, message)
        for sub in list(self._subs.get(channel, ())):
            sub.offer(message)

    async def subscribe(self, channel: str) -> Subscription:
        check_notice(channel, "")
        sub = _LocalSubscription(self, channel)
        self._subs.setdefault(channel, set()).add(sub)
        return sub

    def interrupt(self) -> None:
        """Tell every subscriber that notices may have been lost (each gets ``None``).

        Cross-process backends call this when their connection to the broker dropped."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.offer_lost()

    def _drop(self, sub: _LocalSubscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.channel]

    async def close(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                await sub.close()
