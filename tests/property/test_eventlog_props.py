"""Hypothesis: the TCG event log: round trip and fuzz."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats import eventlog as el

events = st.builds(
    el.Event,
    st.integers(0, 23),
    st.integers(0, 2**32 - 1),
    st.tuples(st.tuples(st.just(el.ALG_SHA256), st.binary(min_size=32, max_size=32))),
    st.binary(max_size=64),
)


@given(st.lists(events, max_size=10), st.binary(max_size=20))
def test_round_trip(evs: list[el.Event], vendor: bytes) -> None:
    log = el.EventLog(el.SpecIdEvent(vendor_info=vendor), tuple(evs))
    assert el.parse(log.to_bytes()) == log


@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        log = el.parse(data)
    except FormatError:
        return
    assert isinstance(log, el.EventLog)


@given(st.lists(events, max_size=5), st.integers(0, 10_000))
def test_mutated_log(evs: list[el.Event], pos: int) -> None:
    raw = bytearray(el.EventLog(el.SpecIdEvent(), tuple(evs)).to_bytes())
    raw[pos % len(raw)] ^= 0xFF
    with contextlib.suppress(FormatError):
        el.parse(bytes(raw))
