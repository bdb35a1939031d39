"""The cross-process bus contract, run against both backends (PostgreSQL LISTEN/NOTIFY and
NATS): two buses hear each other in order, a notice from another process arrives, a lost
connection is reported (``None``) and healed, overflow is the embedded bus's, limits are
refused before the broker, and a closed bus starts afresh.

``broker`` is parametrized: ``postgres`` (the test database's server) and ``nats`` (a
nats-server of this test's own, restarted to drop the connection). Backend-specific
tests are in test_bus_pg.py and test_bus_nats.py.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import FormatError
from bastion.limits import BUS_MESSAGE_MAX_SIZE, BUS_QUEUE_MAX
from bastion.server.bus import Bus, Subscription

SRC = Path(__file__).resolve().parents[3] / "src"


@dataclass
class Broker:
    """How to make a bus of one backend, and how to cut its connection from outside."""

    kind: str
    url: str
    make: Callable[[], Any]
    drop: Callable[[], None]  # blocking: run in a thread


def _terminate_pg_listeners(pg_url: str) -> None:
    import psycopg

    from bastion.server.bus_pg import LISTEN_APP_NAME, libpq_url

    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (LISTEN_APP_NAME,),
        ).fetchall()
    assert len(rows) == 1, rows


@pytest.fixture(params=["postgres", "nats"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "postgres":
        name = request.getfixturevalue("pg_database")
        if name is None:
            pytest.skip("PostgreSQL is unreachable (Debian package 'postgresql')")
        from bastion.server.bus_pg import PgBus

        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        yield Broker("postgres", url, lambda: PgBus(url), lambda: _terminate_pg_listeners(url))
        return
    from bastion.server.bus_nats import NatsBus

    server = request.getfixturevalue("nats_server")
    yield Broker("nats", server.url, lambda: NatsBus(server.url), server.restart)


async def _next(sub: Subscription, timeout: float = 5.0) -> str | None:
    it: AsyncIterator[str | None] = sub.__aiter__()
    return await asyncio.wait_for(it.__anext__(), timeout)


def test_two_buses_hear_each_other_in_order(broker: Broker) -> None:
    async def run() -> tuple[list[str | None], list[str | None], bool]:
        a: Bus = broker.make()
        b: Bus = broker.make()
        try:
            sub_a = await a.subscribe("device:1")
            sub_b = await b.subscribe("device:1")
            other = await b.subscribe("device:2")
            for i in range(5):
                await a.publish("device:1", f"m{i}")
            got_a = [await _next(sub_a) for _ in range(5)]
            got_b = [await _next(sub_b) for _ in range(5)]
            await b.publish("device:2", "from-b")
            quiet = await _next(other) == "from-b"  # nothing of device:1 came before it
            return got_a, got_b, quiet
        finally:
            await a.close()
            await b.close()

    got_a, got_b, other_ok = asyncio.run(run())
    assert got_a == got_b == [f"m{i}" for i in range(5)]
    assert other_ok


def test_a_notice_from_another_process_arrives(broker: Broker) -> None:
    script = (
        "import asyncio, sys\n"
        "from bastion.server.bus_nats import NatsBus\n"
        "from bastion.server.bus_pg import PgBus\n"
        "async def main():\n"
        "    bus = (PgBus if sys.argv[1] == 'postgres' else NatsBus)(sys.argv[2])\n"
        "    await bus.publish('device:xp', 'hello from another process')\n"
        "    await bus.close()\n"
        "asyncio.run(main())\n"
    )

    async def run() -> str | None:
        bus = broker.make()
        try:
            sub = await bus.subscribe("device:xp")
            env = {**os.environ, "PYTHONPATH": str(SRC)}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, broker.kind, broker.url, env=env
            )
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            return await _next(sub)
        finally:
            await bus.close()

    assert asyncio.run(run()) == "hello from another process"


def test_a_lost_connection_says_none_then_recovers(broker: Broker) -> None:
    async def run() -> tuple[str | None, str | None, int]:
        bus = broker.make()
        try:
            sub = await bus.subscribe("device:r")
            await asyncio.to_thread(broker.drop)
            lost = await _next(sub)  # notices may have been lost meanwhile
            # publish until the healed connection carries one (reconnect takes a moment)
            got: str | None = None
            for _ in range(100):
                await bus.publish("device:r", "after")
                try:
                    got = await _next(sub, timeout=0.2)
                except TimeoutError:
                    continue
                if got is not None:  # (more loss markers while it reconnected)
                    break
            return lost, got, bus.connects
        finally:
            await bus.close()

    lost, got, connects = asyncio.run(run())
    assert lost is None
    assert got == "after"
    assert connects == 2


def test_overflow_is_signalled_by_none(broker: Broker) -> None:
    async def run() -> list[str | None]:
        bus = broker.make()
        try:
            sub = await bus.subscribe("flood")
            total = BUS_QUEUE_MAX + 20
            for i in range(total):
                await bus.publish("flood", str(i))
            # wait until the last notice went through the connection
            queue = sub.queue  # type: ignore[attr-defined]
            for _ in range(200):
                if queue.qsize() >= BUS_QUEUE_MAX:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            return [queue.get_nowait() for _ in range(queue.qsize())]
        finally:
            await bus.close()

    got = asyncio.run(run())
    assert None in got
    assert len(got) <= BUS_QUEUE_MAX
    # what survived arrived in order; the None says the rest must be re-read
    numbers = [int(m) for m in got if m is not None]
    assert numbers == sorted(numbers)
    assert numbers[-1] == BUS_QUEUE_MAX + 19  # the newest notice is never the one dropped


def test_limits_refused_before_the_broker(broker: Broker) -> None:
    async def run() -> None:
        bus = broker.make()
        try:
            with pytest.raises(FormatError, match="bus message"):
                await bus.publish("c", "x" * (BUS_MESSAGE_MAX_SIZE + 1))
            with pytest.raises(FormatError, match="bus channel"):
                await bus.subscribe("")
            with pytest.raises(FormatError, match="bus channel"):
                await bus.publish("x" * 201, "")
        finally:
            await bus.close()

    asyncio.run(run())


def test_a_closed_bus_starts_afresh(broker: Broker) -> None:
    """An app restarted in the same process (or reused by tests) delivers again."""

    async def once(bus: Bus, note: str) -> str | None:
        sub = await bus.subscribe("device:again")
        await bus.publish("device:again", note)
        got = await _next(sub)
        await bus.close()
        return got

    bus = broker.make()
    assert asyncio.run(once(bus, "first")) == "first"
    # a new event loop, as a restarted server has
    assert asyncio.run(once(bus, "second")) == "second"
