"""Measurement plan: PCR registry assignment and prediction = replay."""

from __future__ import annotations

import hashlib

from bastion.formats import eventlog as el
from bastion.trust import measure


def _extend(pcr: bytes, data: bytes) -> bytes:
    return hashlib.sha256(pcr + hashlib.sha256(data).digest()).digest()


def test_pcr_assignment_follows_the_registry() -> None:
    events = measure.boot_events(b"k" * 32, b"loader", ((".linux", b"K"),), b"r" * 32)
    by_pcr = {e.pcr for e in events}
    assert by_pcr == {0, 4, 7, 11, 15}
    assert all(e.event_type != el.EventType.EV_NO_ACTION for e in events)


def test_unit_events_are_systemd_stub_style() -> None:
    events = measure.unit_events(((".linux", b"KERNEL"), (".cmdline", b"ro")))
    pcr = bytes(32)
    for name, content in ((".linux", b"KERNEL"), (".cmdline", b"ro")):
        pcr = _extend(pcr, name.encode() + b"\0")
        pcr = _extend(pcr, content)
    assert el.replay(events)[11] == pcr


def test_predict_covers_golden_pcrs_and_lock_changes_pcr15() -> None:
    before = measure.rom_events(b"k" * 32, b"l") + measure.root_events(b"r" * 32)
    after = before + measure.lock_events()
    assert measure.predict(before)[15] != measure.predict(after)[15]
    assert set(measure.GOLDEN_PCRS) <= set(measure.predict(after))


def test_seal_selection() -> None:
    sel = measure.seal_selection()
    assert str(sel) == "sha256:0,4,7,11,15"
