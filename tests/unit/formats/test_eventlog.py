"""Crypto-agile event log: layout, replay rules, negative cases."""

from __future__ import annotations

import hashlib
import struct

import pytest

from bastion.errors import FormatError, LimitError
from bastion.formats import eventlog as el


def _log() -> el.EventLog:
    return el.EventLog(
        el.SpecIdEvent(),
        (
            el.measure(4, el.EventType.EV_IPL, b"loader", b"loader bytes"),
            el.measure(11, el.EventType.EV_IPL, b".linux\0"),
            el.measure(4, el.EventType.EV_SEPARATOR, bytes(4)),
        ),
    )


def test_round_trip() -> None:
    log = _log()
    assert el.parse(log.to_bytes()) == log


def test_header_is_legacy_no_action_with_spec_id() -> None:
    raw = _log().to_bytes()
    pcr, etype = struct.unpack_from("<II", raw)
    assert (pcr, etype) == (0, 3)
    assert raw[8:28] == bytes(20)
    assert raw[32:48] == b"Spec ID Event03\0"


def test_replay_extends_in_order() -> None:
    log = _log()
    pcr4 = hashlib.sha256(bytes(32) + hashlib.sha256(b"loader bytes").digest()).digest()
    pcr4 = hashlib.sha256(pcr4 + hashlib.sha256(bytes(4)).digest()).digest()
    pcrs = el.replay(log.events)
    assert pcrs[4] == pcr4
    assert pcrs[11] == hashlib.sha256(bytes(32) + hashlib.sha256(b".linux\0").digest()).digest()


def test_no_action_does_not_extend_and_startup_locality_sets_pcr0() -> None:
    loc = el.Event(
        0, el.EventType.EV_NO_ACTION, ((el.ALG_SHA256, bytes(32)),), b"StartupLocality\0\x03"
    )
    other = el.Event(5, el.EventType.EV_NO_ACTION, ((el.ALG_SHA256, b"\x01" * 32),), b"whatever")
    ev = el.measure(0, el.EventType.EV_S_CRTM_VERSION, b"rom")
    pcrs = el.replay([loc, other, ev])
    assert 5 not in pcrs
    start = bytes(31) + b"\x03"
    assert pcrs[0] == hashlib.sha256(start + ev.digest(el.ALG_SHA256)).digest()


def test_startup_locality_after_extend_refused() -> None:
    ev = el.measure(0, el.EventType.EV_S_CRTM_VERSION, b"rom")
    loc = el.Event(
        0, el.EventType.EV_NO_ACTION, ((el.ALG_SHA256, bytes(32)),), b"StartupLocality\0\x03"
    )
    with pytest.raises(FormatError):
        el.replay([ev, loc])


@pytest.mark.parametrize("cut", [1, 10, 40, 60, 100])
def test_truncation_refused(cut: int) -> None:
    raw = _log().to_bytes()
    with pytest.raises(FormatError):
        el.parse(raw[: len(raw) - cut])


def test_not_crypto_agile_refused() -> None:
    raw = bytearray(_log().to_bytes())
    raw[32:48] = b"Spec ID Event02\0"
    with pytest.raises(FormatError, match="Spec ID"):
        el.parse(bytes(raw))


def test_undeclared_algorithm_refused() -> None:
    raw = bytearray(_log().to_bytes())
    first = 32 + int.from_bytes(raw[28:32], "little")
    # the first TCG_PCR_EVENT2's algorithm id lives after pcr, type, count
    raw[first + 12 : first + 14] = (0x0004).to_bytes(2, "little")
    with pytest.raises(FormatError):
        el.parse(bytes(raw))


def test_bad_pcr_index_refused() -> None:
    raw = bytearray(_log().to_bytes())
    first = 32 + int.from_bytes(raw[28:32], "little")
    raw[first : first + 4] = (24).to_bytes(4, "little")
    with pytest.raises(FormatError, match="PCR 24"):
        el.parse(bytes(raw))


def test_oversized_event_data_refused() -> None:
    raw = bytearray(_log().to_bytes())
    first = 32 + int.from_bytes(raw[28:32], "little")
    size_at = first + 12 + 2 + 32
    raw[size_at : size_at + 4] = (0xFFFFFFF0).to_bytes(4, "little")
    with pytest.raises(LimitError):
        el.parse(bytes(raw))


def test_too_many_algorithms_refused() -> None:
    spec = el.SpecIdEvent(tuple((0x1000 + i, 32) for i in range(9)))
    raw = el.EventLog(spec, ()).to_bytes()
    with pytest.raises(LimitError):
        el.parse(raw)


def _legacy(pcr: int, etype: int, data: bytes) -> bytes:
    import hashlib
    import struct

    return (
        struct.pack("<II", pcr, etype)
        + hashlib.sha1(data).digest()
        + (struct.pack("<I", len(data)) + data)
    )


def test_legacy_sha1_log_parses_round_trips_and_replays() -> None:
    import hashlib

    raw = _legacy(0, 8, b"1.0\0") + _legacy(4, 0xD, b"loader") + _legacy(4, 4, bytes(4))
    log = el.parse(raw)
    assert log.legacy
    assert [(e.pcr, e.event_type) for e in log.events] == [(0, 8), (4, 0xD), (4, 4)]
    assert log.to_bytes() == raw
    pcr4 = bytes(20)
    for data in (b"loader", bytes(4)):
        pcr4 = hashlib.sha1(pcr4 + hashlib.sha1(data).digest()).digest()
    assert el.replay(log.events, el.ALG_SHA1)[4] == pcr4


def test_legacy_log_with_tpm12_spec_id_header_parses() -> None:
    header = b"Spec ID Event00\0" + bytes(8)
    raw = _legacy(0, 3, header)[:8] + bytes(20) + len(header).to_bytes(4, "little") + header
    log = el.parse(raw + _legacy(0, 4, bytes(4)))
    assert log.legacy and len(log.events) == 2


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (_legacy(0, 8, b"x")[:-2], "truncated"),  # data cut short
        (_legacy(0, 8, b"x")[:20], "truncated"),  # digest cut short
        (_legacy(24, 8, b"x"), "PCR 24"),
        (_legacy(0, 8, b"x")[:28] + (2**31).to_bytes(4, "little"), "exceeds"),
        (_legacy(0, 8, b"x") + b"\0\0", "truncated"),  # stray bytes after the last event
    ],
)
def test_legacy_log_negative(raw: bytes, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment):
        el.parse(raw)
