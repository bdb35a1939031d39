"""Components of a real systemd-stub event log (UTF-16LE section names) and their offline
prediction from the UKI's sections (trust/golden.stub_components)."""

from __future__ import annotations

import hashlib

from bastion.formats import eventlog as el
from bastion.trust.golden import components_of, stub_components

SECTIONS = {
    ".linux": b"MZ kernel",
    ".osrel": b"ID=bastion\n",
    ".cmdline": b"roothash=00\0",
    ".initrd": b"070701",
    ".pcrpkey": b"-----BEGIN PUBLIC KEY-----",
    ".pcrsig": b"{}",  # not measured by the stub
}


def _stub_log(utf16: bool) -> list[el.Event]:
    """The PCR 11 events systemd-stub 252 logs: name then content, same description."""
    events = []
    for name in (".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"):
        tag = (name + "\0").encode("utf-16-le" if utf16 else "ascii")
        for measured in ((name + "\0").encode(), SECTIONS[name]):
            digest = hashlib.sha256(measured).digest()
            events.append(el.Event(11, el.EventType.EV_IPL, ((el.ALG_SHA256, digest),), tag))
    return events


def test_utf16_stub_log_names_components_as_predicted() -> None:
    predicted = stub_components(SECTIONS)
    assert sorted(predicted) == [
        "cmdline",
        "initrd",
        "kernel",
        "os-release",
        "section-pcrpkey",
    ]
    assert predicted["kernel"] == hashlib.sha256(b"MZ kernel").digest()
    for utf16 in (True, False):
        found, dupes = components_of(_stub_log(utf16), [11])
        assert found == predicted and dupes == []


def test_a_changed_section_is_a_different_component() -> None:
    other = dict(SECTIONS, **{".cmdline": b"roothash=11\0"})
    assert stub_components(other)["cmdline"] != stub_components(SECTIONS)["cmdline"]
    assert {k: v for k, v in stub_components(other).items() if k != "cmdline"} == {
        k: v for k, v in stub_components(SECTIONS).items() if k != "cmdline"
    }
