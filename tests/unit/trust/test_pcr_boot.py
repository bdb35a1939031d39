"""PCR 4 and 9 prediction against the event log of a real boot (tests/vectors/boot)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tests.pebuild import make_pe

from bastion.errors import FormatError
from bastion.formats import cpio
from bastion.formats import eventlog as el
from bastion.formats.pe import PeImage
from bastion.trust import pcr_boot

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "boot"


@pytest.fixture(scope="module")
def vector() -> dict[str, object]:
    data: dict[str, object] = json.loads((VECTORS / "boot.json").read_text())
    return data


@pytest.fixture(scope="module")
def log() -> el.EventLog:
    return el.parse((VECTORS / "eventlog.bin").read_bytes())


def _pcr(vector: dict[str, object], pcr: int) -> bytes:
    pcrs = vector["guest_pcrs_sha256"]
    assert isinstance(pcrs, dict)
    return bytes.fromhex(pcrs[str(pcr)])


def _events(log: el.EventLog, pcr: int) -> list[tuple[int, bytes]]:
    return [(e.event_type, e.digest(el.ALG_SHA256)) for e in log.events if e.pcr == pcr]


def _cmdline(vector: dict[str, object]) -> str:
    section = bytes.fromhex(str(vector["cmdline"]))
    return pcr_boot.stub_cmdline({".cmdline": section})


def test_pcr4_known_answer(vector: dict[str, object], log: el.EventLog) -> None:
    digests = [
        bytes.fromhex(str(vector[k]))
        for k in ("loader_authenticode_sha256", "uki_authenticode_sha256")
    ]
    events = pcr_boot.pcr4_events_for_digests(digests)
    # the same events, in the same order, as OVMF logged: action, separator, loader, UKI
    assert [(e.event_type, e.digest(el.ALG_SHA256)) for e in events] == _events(log, 4)
    assert el.replay(events)[4] == el.replay(log.events)[4] == _pcr(vector, 4)


def test_pcr9_known_answer(vector: dict[str, object], log: el.EventLog) -> None:
    initrd = bytes.fromhex(str(vector["stub_initrd_sha256"]))
    events = pcr_boot.pcr9_events_for_digest(_cmdline(vector), initrd)
    logged = [e for e in log.events if e.pcr == 9]
    # the Linux stub's tagged events, data included: LoadOptions, then the initrd
    assert [(e.event_type, e.digest(el.ALG_SHA256), e.data) for e in events] == [
        (e.event_type, e.digest(el.ALG_SHA256), e.data) for e in logged
    ]
    assert el.replay(events)[9] == el.replay(log.events)[9] == _pcr(vector, 9)


def test_stub_initrd_appends_the_pcr_cpios(vector: dict[str, object]) -> None:
    sections = {
        ".initrd": b"abcdef",  # padded to 8
        ".pcrsig": str(vector["pcrsig"]).encode(),
        ".pcrpkey": str(vector["pcrpkey"]).encode(),
    }
    out = pcr_boot.stub_initrd(sections)
    assert out[:8] == b"abcdef\0\0"
    sig = pcr_boot.stub_cpio(".extra", "tpm2-pcr-signature.json", sections[".pcrsig"])
    assert out[8:] == sig + pcr_boot.stub_cpio(
        ".extra", "tpm2-pcr-public-key.pem", sections[".pcrpkey"]
    )
    entries = cpio.parse(sig)
    assert [(e.name, e.mode, e.data) for e in entries] == [
        (".extra", 0o40555, b""),
        (".extra/tpm2-pcr-signature.json", 0o100444, sections[".pcrsig"]),
    ]
    assert sig.startswith(b"070701" + b"00000001" + b"0000416d")  # lower-case hex, as stub 252
    assert len(sig) % 4 == 0
    assert pcr_boot.stub_initrd({".initrd": b"abcd"}) == b"abcd"


def test_predictors_from_bytes_match_the_digest_forms() -> None:
    image = make_pe()
    digest = PeImage.parse(image).authenticode_digest("sha256")
    assert (
        pcr_boot.predict_pcr4([image]) == el.replay(pcr_boot.pcr4_events_for_digests([digest]))[4]
    )
    initrd = b"initrd bytes"
    assert (
        pcr_boot.predict_pcr9("quiet", initrd)
        == el.replay(pcr_boot.pcr9_events_for_digest("quiet", hashlib.sha256(initrd).digest()))[9]
    )
    # the command line and each image change the values
    assert pcr_boot.predict_pcr9("quiet", initrd) != pcr_boot.predict_pcr9("quiet ", initrd)
    assert pcr_boot.predict_pcr4([image]) != pcr_boot.predict_pcr4([image, image])


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: pcr_boot.predict_pcr4([b"MZ not a PE"]), "not a PE image"),
        (lambda: pcr_boot.pcr4_events_for_digests([bytes(31)]), "32 bytes"),
        (lambda: pcr_boot.predict_pcr9("a\0b", b""), "NUL"),
        (lambda: pcr_boot.pcr9_events_for_digest("a", bytes(20)), "32 bytes"),
        (lambda: pcr_boot.stub_cmdline({}), "no .cmdline"),
        (lambda: pcr_boot.stub_cmdline({".cmdline": "é=1".encode()}), "not ASCII"),
    ],
)
def test_refusals(call: object, needle: str) -> None:
    assert callable(call)
    with pytest.raises(FormatError, match=needle):
        call()
