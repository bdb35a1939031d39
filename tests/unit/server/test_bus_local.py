"""LocalBus: notices reach current subscribers in order; overflow and limits are explicit."""

from __future__ import annotations

import asyncio

import pytest

from bastion.errors import FormatError
from bastion.limits import BUS_MESSAGE_MAX_SIZE, BUS_QUEUE_MAX
from bastion.server.bus import LocalBus


def test_publish_reaches_each_subscriber_in_order() -> None:
    async def run() -> tuple[list[str | None], list[str | None]]:
        bus = LocalBus()
        await bus.publish("device:1", "lost: nobody listens yet")
        a = await bus.subscribe("device:1")
        b = await bus.subscribe("device:1")
        other = await bus.subscribe("device:2")
        for i in range(3):
            await bus.publish("device:1", f"m{i}")
        got_a = [m async for m in _take(a, 3)]
        got_b = [m async for m in _take(b, 3)]
        assert other.queue.empty()  # type: ignore[attr-defined]
        await bus.close()
        return got_a, got_b

    got_a, got_b = asyncio.run(run())
    assert got_a == got_b == ["m0", "m1", "m2"]


def test_overflow_is_signalled_by_none() -> None:
    async def run() -> list[str | None]:
        bus = LocalBus()
        sub = await bus.subscribe("c")
        for i in range(BUS_QUEUE_MAX + 5):
            await bus.publish("c", str(i))
        out = [m async for m in _take(sub, BUS_QUEUE_MAX)]
        await sub.close()
        return out

    out = asyncio.run(run())
    assert None in out
    # the newest notice is never the one dropped: it follows the loss marker
    assert out[-1] == str(BUS_QUEUE_MAX + 4)
    assert len(out) == BUS_QUEUE_MAX


def test_limits_refused() -> None:
    async def run() -> None:
        bus = LocalBus()
        with pytest.raises(FormatError, match="bus message"):
            await bus.publish("c", "x" * (BUS_MESSAGE_MAX_SIZE + 1))
        with pytest.raises(FormatError, match="bus channel"):
            await bus.subscribe("")

    asyncio.run(run())


async def _take(sub: object, n: int):  # type: ignore[no-untyped-def]
    count = 0
    async for m in sub:  # type: ignore[attr-defined]
        yield m
        count += 1
        if count == n:
            return
