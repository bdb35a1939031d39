"""Hypothesis: event log, boot containers and boot-control: round trip and fuzz."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats import bootctl, bootunit
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


entries = st.lists(
    st.tuples(st.text(alphabet="abcdefghij.", min_size=1, max_size=16), st.binary(max_size=40)),
    max_size=6,
    unique_by=lambda e: e[0],
)


@given(st.sampled_from(list(bootunit.Kind)), entries)
def test_container_round_trip(kind: bootunit.Kind, items: list[tuple[str, bytes]]) -> None:
    c = bootunit.Container(kind, tuple(items))
    assert bootunit.parse(c.to_bytes()) == c


@given(st.binary(max_size=300))
def test_container_arbitrary_bytes(data: bytes) -> None:
    for fn in (bootunit.parse, bootunit.parse_unit, bootunit.parse_loader):
        with contextlib.suppress(FormatError):
            fn(data)


@given(st.binary(min_size=0, max_size=600))
def test_bootctl_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        bootctl.parse(data)
    state = bootctl.parse_partition(data)
    assert isinstance(state.control, bootctl.BootControl)


@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 1),
    st.tuples(st.integers(0, 255), st.integers(0, 15), st.booleans(), st.booleans()),
    st.tuples(st.integers(0, 255), st.integers(0, 15), st.booleans(), st.booleans()),
)
def test_bootctl_round_trip(
    seq: int, active: int, a: tuple[int, int, bool, bool], b: tuple[int, int, bool, bool]
) -> None:
    ctl = bootctl.BootControl(seq, active, (bootctl.SlotState(*a), bootctl.SlotState(*b)))
    assert bootctl.parse(ctl.to_bytes()) == ctl


@given(st.binary(max_size=300))
def test_verity_signature_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        bootunit.parse_verity_signature(data)


@given(
    st.binary(min_size=32, max_size=64), st.binary(min_size=1, max_size=80), st.binary(max_size=32)
)
def test_verity_signature_round_trip(root: bytes, sig: bytes, fpr: bytes) -> None:
    obj = bootunit.VeritySignature(root, sig, fpr)
    assert bootunit.parse_verity_signature(obj.to_bytes()) == obj
