"""A/B slots as the ESP and a small record file describe them, and the boot choice.

Boot state lives where systemd-boot keeps it: each installed slot's signed UKI is a Boot
Loader Specification type #2 entry ``EFI/Linux/bastion-<generation>-<slot>[+LEFT-DONE].efi``
(:mod:`bastion.formats.bls`). The generation grows with each install, so the newest
entry sorts first as systemd-boot sorts (version order, newest first); an entry with a
counter is in trial; ``+0-N`` is bad and sorts last; no counter means committed
(blessed). Beside it, the platform store keeps ``update-slots.json``: one
:class:`SlotRecord` per slot (version, SVN, bundle root hash, UKI and rootfs digests,
state, last result) and ``update-booted.json``: the entry booted last (what systemd-boot
exports as ``LoaderEntrySelected``).

:func:`choose` is the decision (pure): among the entries whose slot has a record, whose
UKI is the one recorded and whose SVN is not below the fuse counter, the first in
systemd-boot order (not bad, then newest generation). :func:`firmware_boot` is the
model of the firmware + systemd-boot + the chain's anti-rollback check that the sim
and the power-cut tests run at each "reboot": it takes the choice, decrements the
counter of an entry in trial (a rename, as systemd-boot does) and records the booted
entry. A real device's firmware does this itself; the code after boot
(device/update/commit.py) reads :func:`booted`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from bastion.device.platform.base import Platform
from bastion.device.platform.esp import Esp
from bastion.errors import FormatError, NotFoundError, VerificationError
from bastion.formats import bls, strict_json
from bastion.formats.image import SLOTS, root_part, verity_part
from bastion.limits import UPDATE_STATE_MAX_SIZE
from bastion.tpm.base import Tpm

ENTRY_DIR = "EFI/Linux"
RECORDS = "update-slots.json"
BOOTED = "update-booted.json"
#: boot tries a new slot gets (systemd-boot's usual +3)
TRIES = 3
_ENTRY = re.compile(r"bastion-([0-9]{1,9})-([a-z])")


class SlotState:
    """What a slot record says about its slot (plain strings in the JSON)."""

    INSTALLING = "installing"  # being written: its entry is absent, never booted
    TRIAL = "trial"  # installed, entry with a boot counter, not yet committed
    COMMITTED = "committed"  # blessed, fuses raised to its SVN
    FAILED = "failed"  # out of tries or failed its health checks: fell back from it
    ALL = (INSTALLING, TRIAL, COMMITTED, FAILED)


@dataclass(frozen=True, slots=True)
class SlotRecord:
    """One slot: what was installed into it and how that went."""

    slot: str
    version: str
    svn: int
    bundle: str  # signed verity root hash of the bundle it came from ("" for factory)
    uki_sha256: str
    rootfs_sha256: str
    rootfs_size: int
    generation: int
    state: str
    reason: str = ""

    @property
    def entry_stem(self) -> str:
        return f"bastion-{self.generation}-{self.slot}"


@dataclass(frozen=True, slots=True)
class Entry:
    """A bastion boot entry on the ESP."""

    filename: str
    name: bls.EntryName
    generation: int
    slot: str

    @property
    def path(self) -> str:
        return f"{ENTRY_DIR}/{self.filename}"

    @property
    def stem(self) -> str:
        return self.name.name


@dataclass(frozen=True, slots=True)
class Booted:
    """The entry the firmware booted last and the slot it names."""

    slot: str
    stem: str
    trial: bool  # it had a boot counter when booted


def root_partition(slot: str) -> str:
    return root_part(slot)


def verity_partition(slot: str) -> str:
    return verity_part(slot)


def other(slot: str) -> str:
    if slot not in SLOTS:
        raise FormatError(f"slot {slot!r} is not one of {SLOTS}")
    return SLOTS[1 - SLOTS.index(slot)]


def entries(esp: Esp) -> list[Entry]:
    """bastion's entries in ``EFI/Linux`` (other files are not ours and are left alone)."""
    found = []
    for filename in esp.list(ENTRY_DIR):
        try:
            name = bls.parse(filename)
        except FormatError:
            continue
        m = _ENTRY.fullmatch(name.name)
        if name.suffix != ".efi" or not m or m.group(2) not in SLOTS:
            continue
        found.append(Entry(filename, name, int(m.group(1)), m.group(2)))
    return found


def entries_of(esp: Esp, slot: str) -> list[Entry]:
    return [e for e in entries(esp) if e.slot == slot]


def _sort_key(entry: Entry) -> tuple[bool, int]:
    return (entry.name.bad, -entry.generation)


def choose(
    found: Sequence[Entry],
    records: Mapping[str, SlotRecord],
    uki_digest: Mapping[str, str],
    fuse_counter: int,
) -> Entry | None:
    """The entry to boot: systemd-boot order over the entries that pass the chain's
    checks (a record for the slot naming this entry, the UKI the record names, an SVN
    not below the fuses). ``uki_digest`` maps an entry's file name to its SHA-256."""
    for entry in sorted(found, key=_sort_key):
        rec = records.get(entry.slot)
        if rec is None or rec.entry_stem != entry.stem:
            continue
        if rec.state == SlotState.INSTALLING:
            continue
        if rec.svn < fuse_counter:
            continue
        if uki_digest.get(entry.filename) != rec.uki_sha256:
            continue
        return entry
    return None


# --- the record files ---------------------------------------------------------------------


def load_records(platform: Platform) -> dict[str, SlotRecord]:
    raw = platform.load(RECORDS)
    if raw is None:
        return {}
    if len(raw) > UPDATE_STATE_MAX_SIZE:
        raise FormatError(f"{RECORDS} is {len(raw)} bytes (limit {UPDATE_STATE_MAX_SIZE})")
    doc = strict_json.loads_object(raw, what=RECORDS)
    out: dict[str, SlotRecord] = {}
    for slot, item in doc.items():
        if slot not in SLOTS or not isinstance(item, dict):
            raise FormatError(f"{RECORDS}: entry {slot!r} is not a slot record")
        try:
            rec = SlotRecord(**item)
        except TypeError as exc:
            raise FormatError(f"{RECORDS}: slot {slot} record is malformed: {exc}") from exc
        ints = (rec.svn, rec.rootfs_size, rec.generation)
        strs = (rec.version, rec.bundle, rec.uki_sha256, rec.rootfs_sha256, rec.reason)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) or (
            not all(isinstance(v, str) for v in strs)
        ):
            raise FormatError(f"{RECORDS}: slot {slot} record has a field of the wrong type")
        if rec.slot != slot or rec.state not in SlotState.ALL:
            raise FormatError(f"{RECORDS}: slot {slot} record names {rec.slot}/{rec.state}")
        out[slot] = rec
    return out


def save_record(platform: Platform, record: SlotRecord) -> None:
    records = load_records(platform)
    records[record.slot] = record
    doc = {slot: asdict(rec) for slot, rec in sorted(records.items())}
    platform.store(RECORDS, json.dumps(doc, sort_keys=True).encode())


def update_record(platform: Platform, slot: str, **changes: Any) -> SlotRecord:
    rec = load_records(platform).get(slot)
    if rec is None:
        raise NotFoundError(f"slot {slot} has no record")
    new = replace(rec, **changes)
    save_record(platform, new)
    return new


def booted(platform: Platform) -> Booted | None:
    raw = platform.load(BOOTED)
    if raw is None:
        return None
    doc = strict_json.loads_object(raw, what=BOOTED)
    slot, stem, trial = doc.get("slot"), doc.get("stem"), doc.get("trial")
    if slot not in SLOTS or not isinstance(stem, str) or not isinstance(trial, bool):
        raise FormatError(f"{BOOTED} is malformed")
    return Booted(str(slot), stem, trial)


def uki_digests(esp: Esp, found: Sequence[Entry]) -> dict[str, str]:
    return {e.filename: hashlib.sha256(esp.read(e.path)).hexdigest() for e in found}


def firmware_boot(platform: Platform, tpm: Tpm | None = None) -> Booted:
    """One boot as firmware + systemd-boot + the chain's SVN check do it (the sim's and
    the tests' model): choose, count down a trial entry, record what was booted.
    VerificationError when no entry passes (a bricked device). ``tpm``: the device's
    open TPM where the platform keeps its fuses in TPM NV (ConfigError without it)."""
    counter = platform.fuses(tpm).counter()
    esp = platform.esp()
    found = entries(esp)
    records = load_records(platform)
    entry = choose(found, records, uki_digests(esp, found), counter)
    if entry is None:
        raise VerificationError(
            f"no bootable slot: {len(found)} entries, fuse counter {counter}, "
            f"records for {sorted(records)}"
        )
    trial = entry.name.counting and not entry.name.bad
    if trial:
        esp.rename(entry.path, f"{ENTRY_DIR}/{entry.name.booted().to_string()}")
    shown = Booted(entry.slot, entry.stem, entry.name.counting)
    platform.store(BOOTED, json.dumps(asdict(shown), sort_keys=True).encode())
    return shown
