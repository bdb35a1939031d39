"""A channel hears its device's bus notices (ADR 0034, "Presence on the bus"): the
newest channel of a device wins, everything else only makes the channel re-read."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from bastion.server.channel.hub import OpenChannel

AT = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


def channel(ns: int = 1_000, token: str = "bb" * 8) -> OpenChannel:
    return OpenChannel("d" * 32, "f" * 32, AT, order=(ns, token))


def opened(ns: int, token: str) -> str:
    return json.dumps({"type": "opened", "order": [ns, token]})


# --- notices that must NOT close the channel (each only wakes it to re-read, or nothing) --

NOT_CLOSING = [
    ("its own announcement", opened(1_000, "bb" * 8), False),
    ("an older channel (earlier clock)", opened(999, "ff" * 8), False),
    ("an older channel (same clock, smaller token)", opened(1_000, "aa" * 8), False),
    ("a command id", "0123456789abcdef", True),
    ("revoked (closed by the hub's check, not by the notice)", "revoked", True),
    ("notices were lost", None, True),
    ("not JSON", "{not json", True),
    ("a JSON array", "[1, 2]", True),
    ("another message type", json.dumps({"type": "hello"}), True),
    ("order missing", json.dumps({"type": "opened"}), True),
    ("order of one item", json.dumps({"type": "opened", "order": [2_000]}), True),
    ("order with a string clock", json.dumps({"type": "opened", "order": ["2000", "cc"]}), True),
    ("order with a boolean clock", json.dumps({"type": "opened", "order": [True, "cc"]}), True),
    ("order with a numeric token", json.dumps({"type": "opened", "order": [2_000, 7]}), True),
    ("order with a float clock", json.dumps({"type": "opened", "order": [2e3, "cc"]}), True),
]


@pytest.mark.parametrize(
    ("notice", "rereads"), [(n, r) for _, n, r in NOT_CLOSING], ids=[c[0] for c in NOT_CLOSING]
)
def test_notices_that_do_not_close(notice: str | None, rereads: bool) -> None:
    here = channel()
    here.hear(notice)
    assert here.closing is None and not here.superseded
    assert here.must_read is rereads
    assert here.wake.is_set() is rereads


# --- a newer channel of the same device closes this one -------------------------------------

CLOSING = [
    ("a later clock", opened(1_001, "00" * 8)),
    ("the same clock, a greater token", opened(1_000, "bc" * 8)),
]


@pytest.mark.parametrize("notice", [n for _, n in CLOSING], ids=[c[0] for c in CLOSING])
def test_a_newer_channel_supersedes(notice: str) -> None:
    here = channel()
    here.hear(notice)
    assert here.superseded
    assert here.closing == "superseded by a newer channel of this device"
    assert here.wake.is_set()


def test_of_two_channels_that_hear_each_other_exactly_one_stays() -> None:
    a, b = OpenChannel("d", "f", AT), OpenChannel("d", "f", AT)
    for ch in (a, b):  # each hears both announcements (its own included), in any order
        ch.hear(b.announcement())
        ch.hear(a.announcement())
    assert sorted([a.superseded, b.superseded]) == [False, True]
    newest = max((a, b), key=lambda c: c.order)
    assert not newest.superseded


def test_the_announcement_round_trips() -> None:
    here = channel(ns=123, token="ab" * 8)
    assert json.loads(here.announcement()) == {"type": "opened", "order": [123, "ab" * 8]}
    fresh = OpenChannel("d", "f", AT)
    assert isinstance(fresh.order[0], int) and len(fresh.order[1]) == 16
    assert OpenChannel("d", "f", AT).order != fresh.order  # a token per channel
