"""A shutdown step that hangs or fails cannot keep the server from stopping."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import anyio
import pytest

from bastion.server.app import bounded_step


async def _finishes() -> None:
    await asyncio.sleep(0)


async def _raises() -> None:
    raise RuntimeError("broker gone")


async def _hangs_on_loop() -> None:
    await asyncio.Event().wait()


def test_a_step_that_finishes_is_true() -> None:
    assert asyncio.run(bounded_step("quick", _finishes(), 1.0)) is True


def test_a_step_that_raises_is_logged_and_false(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="bastion.server.app"):
        assert asyncio.run(bounded_step("bus", _raises(), 1.0)) is False
    assert "shutdown: bus failed: broker gone" in caplog.text


def test_a_step_that_hangs_on_the_loop_is_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[bool, float]:
        start = time.monotonic()
        ok = await bounded_step("hub", _hangs_on_loop(), 0.2)
        return ok, time.monotonic() - start

    with caplog.at_level(logging.ERROR, logger="bastion.server.app"):
        ok, took = asyncio.run(main())
    assert ok is False
    assert 0.2 <= took < 2.0
    assert "shutdown: hub did not finish in 0.2 s; left behind" in caplog.text


def test_a_step_stuck_in_a_thread_is_left_behind() -> None:
    """The case of the hang seen in CI: a step awaits a worker thread that does not
    return (anyio does not abandon it on cancel); the next step still runs."""
    release = threading.Event()
    ran: list[str] = []

    async def stuck() -> None:
        await anyio.to_thread.run_sync(release.wait)

    async def after() -> None:
        ran.append("after")

    async def main() -> tuple[bool, bool]:
        first = await bounded_step("stuck", stuck(), 0.2)
        second = await bounded_step("after", after(), 1.0)
        release.set()  # let the thread end so the loop can close
        await asyncio.sleep(0.05)
        return first, second

    try:
        assert asyncio.run(main()) == (False, True)
    finally:
        release.set()
    assert ran == ["after"]


def test_a_step_cancelled_from_inside_is_logged_and_false(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def cancels_itself() -> None:
        raise asyncio.CancelledError

    with caplog.at_level(logging.ERROR, logger="bastion.server.app"):
        assert asyncio.run(bounded_step("channels", cancels_itself(), 1.0)) is False
    assert "shutdown: channels was cancelled" in caplog.text
