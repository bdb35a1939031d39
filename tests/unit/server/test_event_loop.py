"""``bastion server``'s event loop: uvloop where installed (a dependency), asyncio's own
loop where it is not (ADR 0043, third round)."""

from __future__ import annotations

import sys

import pytest

from bastion.server.tlsproto import event_loop


def test_uvloop_is_installed_and_chosen() -> None:
    assert event_loop() == "uvloop"


def test_without_uvloop_the_server_runs_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert event_loop() == "asyncio"
