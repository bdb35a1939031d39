"""The PostgreSQL bus beyond the shared contract (test_bus_contract.py): the payload
codec, a dropped publishing connection re-opened, and NOTIFY's own size limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bastion.errors import FormatError
from bastion.limits import BUS_MESSAGE_MAX_SIZE
from bastion.server.bus import Subscription
from bastion.server.bus_pg import PgBus, decode_payload, encode_payload

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture
def pg_url(pg_database: str | None) -> Iterator[str]:
    if pg_database is None:
        pytest.skip("PostgreSQL is unreachable (Debian package 'postgresql')")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_database}"


async def _next(sub: Subscription, timeout: float = 5.0) -> str | None:
    it: AsyncIterator[str | None] = sub.__aiter__()
    return await asyncio.wait_for(it.__anext__(), timeout)


def test_payload_codec_round_trip_and_refusals() -> None:
    for channel, message in (("device:1", ""), ("a", "b:c"), ("x" * 200, "é" * 10)):
        assert decode_payload(encode_payload(channel, message)) == (channel, message)
    for bad in ("", "nocolon", "0:", "x:abc", "10:short", ":abc"):
        with pytest.raises(FormatError, match="no channel prefix"):
            decode_payload(bad)


def test_publisher_connection_dropped_is_reopened(pg_url: str) -> None:
    import psycopg

    from bastion.server.bus_pg import PUBLISH_APP_NAME, libpq_url

    async def run() -> list[str | None]:
        bus = PgBus(pg_url)
        try:
            sub = await bus.subscribe("c")
            await bus.publish("c", "one")
            with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND datname = current_database()",
                    (PUBLISH_APP_NAME,),
                )
            await bus.publish("c", "two")
            return [await _next(sub), await _next(sub)]
        finally:
            await bus.close()

    assert asyncio.run(run()) == ["one", "two"]


def test_limits_refused_before_the_database(pg_url: str) -> None:
    async def run() -> None:
        bus = PgBus(pg_url)
        try:
            with pytest.raises(FormatError, match="bus message"):
                await bus.publish("c", "x" * (BUS_MESSAGE_MAX_SIZE + 1))
            with pytest.raises(FormatError, match="NOTIFY allows"):
                await bus.publish("c", "x" * (BUS_MESSAGE_MAX_SIZE - 10))
            with pytest.raises(FormatError, match="bus channel"):
                await bus.subscribe("")
        finally:
            await bus.close()

    asyncio.run(run())
