"""The channels one server process holds, and the batched database work they need.

A process may hold 10,000 device channels (docs/agent.md "Scale"). Done per channel,
their database work (presence written on connect and on close, a read of the queued
commands on connect, a re-read every ``CHANNEL_POLL_SECONDS``) is one transaction each:
at 10,000 channels that is tens of thousands of transactions in a connect storm, each
holding a worker thread and a pooled connection, and the operator's own requests then
time out waiting for a connection (bench/agents.py measured it). :class:`ChannelHub`
does that work **in batches, once per process** (ADR 0034, amendment 2026-12-06):

* **Presence** (``device_presence.connected``): channels opened and closed are
  collected and written together every ``CHANNEL_BATCH_SECONDS`` in one transaction
  (:func:`~bastion.server.channel.service.write_presence`).
* **First delivery**: a channel that just connected does not read its commands itself;
  the hub asks, for every channel that connected since its last batch, which have an
  open command or are no longer active (two queries per ``CHANNEL_SWEEP_BATCH``) and
  wakes or closes only those; the others are told their queue was empty, so they send
  ``synced`` without a read of their own.
* **Sweep**: every ``CHANNEL_POLL_SECONDS`` the same question for all channels (queued
  commands only), which catches a lost bus notice.
* **Fleet notices**: the hub subscribes to ``fleet:<id>`` for every fleet it holds a
  channel of; deleting a fleet publishes one notice there and the hub of every process
  closes that fleet's channels after one batched check, instead of one notice and one
  transaction per device.
* **Presence on the bus** (ADR 0034, 2026-12-07): an open channel announces itself on
  ``device:<id>`` (:meth:`OpenChannel.announcement`); an older channel of the device,
  in any process, hears it and closes (:meth:`OpenChannel.hear`), so a device that
  reconnected elsewhere leaves no half-open channel behind.
* **Bounded database work**: everything a channel does in the database (its
  authentication, sending, results, and these batches) runs in worker threads limited
  by one :class:`anyio.CapacityLimiter` of ``channel_db_concurrency`` slots, so channels
  can never take every pooled connection away from the HTTP routes.

The database stays the source of truth: a lost batch (a database error) is logged and
the next sweep repeats the check; a presence batch that failed is retried with the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from bastion import limits
from bastion.errors import BastionError
from bastion.formats import strict_json
from bastion.server.bus import Subscription
from bastion.server.channel import service
from bastion.server.channel.models import CommandStatus
from bastion.server.context import AppContext

log = logging.getLogger(__name__)
T = TypeVar("T")


#: the close reason of a channel a newer channel of its device replaced
SUPERSEDED = "superseded by a newer channel of this device"


def _new_order() -> tuple[int, str]:
    return time.time_ns(), secrets.token_hex(8)


def _announced_order(notice: str) -> tuple[int, str] | None:
    """The ``order`` of an ``opened`` announcement; None for any other notice (and for
    a malformed announcement, which is logged)."""
    if not notice.startswith("{"):
        return None  # a command id, "revoked", "deleted"
    try:
        message = strict_json.loads_object(notice.encode(), what="device notice")
    except BastionError as exc:
        log.warning("malformed device notice ignored: %s", exc)
        return None
    if message.get("type") != "opened":
        return None
    order = message.get("order")
    if (
        isinstance(order, list)
        and len(order) == 2
        and type(order[0]) is int
        and isinstance(order[1], str)
    ):
        return order[0], order[1]
    log.warning("malformed channel announcement ignored: %r", notice[:200])
    return None


@dataclass(eq=False, slots=True)
class OpenChannel:
    """One open device channel, as the hub sees it."""

    device_id: str
    fleet_id: str
    #: when it connected (the guard of its presence row: see write_presence)
    connected_at: dt.datetime
    #: set when the channel has something to do (read its commands, say synced, close)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: commands may be waiting: read them (a notice, the sweep, a result, the first check)
    must_read: bool = False
    #: why the channel must close (the device was revoked or deleted, or a newer
    #: channel of the device opened), once known
    closing: str | None = None
    #: (wall clock in ns at open, a random token): the newest channel of a device wins
    order: tuple[int, str] = field(default_factory=_new_order)
    #: a newer channel of this device opened (here or in another process): this one
    #: closes with code 4001 and leaves the presence row to the newer one
    superseded: bool = False

    def announcement(self) -> str:
        """The notice this channel publishes on ``device:<id>`` once it is open."""
        return json.dumps({"type": "opened", "order": list(self.order)})

    def hear(self, notice: str | None) -> None:
        """A notice on ``device:<id>``: another channel's announcement closes this one
        when that channel is newer; anything else (a command id, ``revoked``, lost
        notices, a malformed announcement) makes the channel re-read its commands."""
        order = _announced_order(notice) if notice is not None else None
        if order is None:
            self.due()
        elif order > self.order:
            self.superseded = True
            self.close(SUPERSEDED)

    def due(self) -> None:
        """Tell the channel to read its commands."""
        self.must_read = True
        self.wake.set()

    def checked_empty(self) -> None:
        """The first check found nothing open for this device: the channel says synced
        without reading (a wake-up with ``must_read`` unset)."""
        self.wake.set()

    def close(self, reason: str) -> None:
        """Tell the channel to close (it raises on its next wake-up)."""
        self.closing = reason
        self.wake.set()


class ChannelHub:
    """The open channels of one server process (module docstring)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._channels: dict[str, set[OpenChannel]] = {}
        self._fleets: dict[str, set[OpenChannel]] = {}
        self._fleet_subs: dict[str, tuple[Subscription, asyncio.Task[None]]] = {}
        self._new: list[OpenChannel] = []
        self._fleet_checks: set[str] = set()
        self._connects: dict[str, dt.datetime] = {}
        self._disconnects: dict[str, dt.datetime] = {}
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: batches written and sweeps run (tests and diagnostics)
        self.batches = 0
        self.sweeps = 0

    # --- bounded database work ------------------------------------------------------------

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (database work of a channel) in a worker thread, at most
        ``channel_db_concurrency`` at once in this process."""
        self._bind_loop()
        assert self._limiter is not None
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _bind_loop(self) -> None:
        # one limiter, event and batcher per event loop (a test may serve one app twice)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._limiter = anyio.CapacityLimiter(self.ctx.settings.channel_db_concurrency)
            self._pending = asyncio.Event()
            self._task = None
            self._fleet_subs = {}
            self._loop = loop

    # --- channels coming and going --------------------------------------------------------

    async def attach(self, channel: OpenChannel) -> None:
        """Register an open channel: its presence and first delivery go in the next batch."""
        self._bind_loop()
        self._channels.setdefault(channel.device_id, set()).add(channel)
        fleet = self._fleets.setdefault(channel.fleet_id, set())
        fleet.add(channel)
        if channel.fleet_id not in self._fleet_subs and self.ctx.bus is not None:
            sub = await self.ctx.bus.subscribe(f"fleet:{channel.fleet_id}")
            task = asyncio.ensure_future(self._fleet_notices(channel.fleet_id, sub))
            self._fleet_subs[channel.fleet_id] = (sub, task)
        self._new.append(channel)
        self._connects[channel.device_id] = channel.connected_at
        self._disconnects.pop(channel.device_id, None)
        self._kick()

    async def detach(self, channel: OpenChannel) -> None:
        """Forget a closed channel; its presence is cleared in the next batch."""
        channels = self._channels.get(channel.device_id)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._channels[channel.device_id]
        fleet = self._fleets.get(channel.fleet_id)
        if fleet is not None:
            fleet.discard(channel)
            if not fleet:
                del self._fleets[channel.fleet_id]
                held = self._fleet_subs.pop(channel.fleet_id, None)
                if held is not None:
                    held[1].cancel()
                    with contextlib.suppress(Exception):
                        await held[0].close()
        with contextlib.suppress(ValueError):
            self._new.remove(channel)
        if self._connects.get(channel.device_id) == channel.connected_at:
            # opened and closed within one batch: the row never said "connected" for it
            del self._connects[channel.device_id]
        if channel.device_id not in self._channels and not channel.superseded:
            # a superseded channel leaves the row to the newer one (here or elsewhere)
            self._disconnects[channel.device_id] = channel.connected_at
        self._kick()

    def held(self) -> int:
        """How many channels this process holds."""
        return sum(len(c) for c in self._channels.values())

    async def _fleet_notices(self, fleet_id: str, sub: Subscription) -> None:
        async for _notice in sub:  # "deleted", or None (notices lost): check either way
            self._fleet_checks.add(fleet_id)
            self._kick()

    # --- the batcher ----------------------------------------------------------------------

    def _kick(self) -> None:
        self._pending.set()
        task = self._task
        if task is None or task.done():
            self._task = asyncio.ensure_future(self._run_forever())

    async def _run_forever(self) -> None:
        next_sweep = asyncio.get_running_loop().time() + limits.CHANNEL_POLL_SECONDS
        while self._channels or self._disconnects or self._connects:
            timeout = max(0.0, next_sweep - asyncio.get_running_loop().time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pending.wait(), timeout)
            if self._pending.is_set():
                await asyncio.sleep(limits.CHANNEL_BATCH_SECONDS)  # let a batch gather
                self._pending.clear()
                try:
                    await self.flush()
                except Exception as exc:  # a database hiccup: the next batch tries again
                    log.warning("channel batch failed: %r", exc)
                    await asyncio.sleep(limits.CHANNEL_BATCH_SECONDS)
                    self._pending.set()
            if asyncio.get_running_loop().time() >= next_sweep:
                next_sweep = asyncio.get_running_loop().time() + limits.CHANNEL_POLL_SECONDS
                try:
                    await self.sweep()
                except Exception as exc:
                    log.warning("channel sweep failed: %r", exc)

    async def flush(self) -> None:
        """Write pending presence, then check new channels and notified fleets (one batch)."""
        connects, self._connects = self._connects, {}
        disconnects, self._disconnects = self._disconnects, {}
        new, self._new = self._new, []
        fleets, self._fleet_checks = self._fleet_checks, set()
        try:
            if connects or disconnects:
                await self.run_db(self._write_presence, connects, disconnects)
            ids = {c.device_id for c in new}
            for fleet_id in fleets:
                ids.update(c.device_id for c in self._fleets.get(fleet_id, ()))
            if ids:
                statuses = CommandStatus.OPEN if new else (CommandStatus.QUEUED,)
                with_commands, gone = await self.run_db(self._attention, sorted(ids), statuses)
                self._act(with_commands, gone)
                for channel in new:  # the rest learn that nothing was queued for them
                    if channel.device_id not in with_commands | gone:
                        channel.checked_empty()
        except BaseException:
            # put the work back (newer presence events win) for the next batch
            self._connects = {**connects, **self._connects}
            self._disconnects = {**disconnects, **self._disconnects}
            self._new = new + self._new
            self._fleet_checks |= fleets
            raise
        self.batches += 1

    async def sweep(self) -> int:
        """Wake the channels with a queued command, close those whose device is gone;
        how many channels were woken or closed."""
        ids = sorted(self._channels)
        if not ids:
            return 0
        with_commands, gone = await self.run_db(self._attention, ids, (CommandStatus.QUEUED,))
        self.sweeps += 1
        return self._act(with_commands, gone)

    def _act(self, with_commands: set[str], gone: set[str]) -> int:
        count = 0
        for device_id in with_commands:
            for channel in self._channels.get(device_id, ()):
                channel.due()
                count += 1
        for device_id in gone:
            for channel in self._channels.get(device_id, ()):
                channel.close(f"device {device_id} was revoked or deleted")
                count += 1
        return count

    def _write_presence(
        self, connects: dict[str, dt.datetime], disconnects: dict[str, dt.datetime]
    ) -> None:
        with self.ctx.db.session(write=True) as session:
            service.write_presence(session, connects, disconnects)

    def _attention(self, ids: list[str], statuses: tuple[str, ...]) -> tuple[set[str], set[str]]:
        with self.ctx.db.session(write=False) as session:
            return service.attention(session, ids, statuses)

    async def close(self) -> None:
        """Write what is pending and drop the fleet subscriptions (app shutdown)."""
        for sub, task in list(self._fleet_subs.values()):
            task.cancel()
            with contextlib.suppress(Exception):
                await sub.close()
        self._fleet_subs = {}
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self._connects or self._disconnects:
            with contextlib.suppress(Exception):
                await self.flush()
