"""Shared by the attestation tests: a sim boot's measurements, golden values of it, and
extending them into a TPM (the boot chain's own event lists, device/measure.py)."""

from __future__ import annotations

import hashlib

from bastion.formats import eventlog as el
from bastion.tpm.base import Tpm
from bastion.trust import measure
from bastion.trust.verdict import GoldenValues, components_of

SEL = measure.seal_selection()


def boot_events(kernel: bytes = b"kernel v1", svn: int = 3) -> list[el.Event]:
    """The events of a sim boot of a small image (as the boot chain records them)."""
    sections = [
        (".linux", kernel),
        (".osrel", b"ID=bastion\n"),
        (".cmdline", b"quiet roothash=00"),
        (".initrd", b"initrd"),
        (".svn", str(svn).encode()),
        (".modcert", b"mod"),
        (".veritycert", b"ver"),
    ]
    return measure.boot_events(hashlib.sha256(b"pk").digest(), b"loader", sections, bytes(32))


def golden_of(events: list[el.Event], svn: int = 3, version: str = "1.0") -> GoldenValues:
    """The golden values a build would sign for a boot recording ``events``."""
    pcrs = measure.predict(events)
    comps, _ = components_of(events)
    return GoldenValues(version, "ab" * 32, svn, {i: pcrs[i] for i in SEL.indexes}, comps)


def extend(tpm: Tpm, events: list[el.Event]) -> bytes:
    """Measure ``events`` into ``tpm``; the serialised event log."""
    for ev in events:
        tpm.pcr_extend(ev.pcr, {SEL.bank: ev.digest(el.ALG_SHA256)})
    return el.EventLog(el.SpecIdEvent(), tuple(events)).to_bytes()
