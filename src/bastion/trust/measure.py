"""What each boot stage measures, into which PCR (UAPI Linux TPM PCR registry), as events.

Pure: functions return :class:`bastion.formats.eventlog.Event` lists; the boot chain
extends them into the TPM and appends them to the event log, and ``bastion image pcrs``
replays the same lists offline to predict the golden PCR values. One definition serves
both, so prediction and boot cannot drift apart.

PCR assignment (registry: uapi-group ``linux_tpm_pcr_registry.md``):

====  =====================================================================================
PCR   contents
====  =====================================================================================
0     the sim ROM's identity (EV_S_CRTM_VERSION), as core firmware code is measured
4     the bootloader stage (EV_IPL), as firmware measures the boot loader it runs
7     the platform root key hash the loader was verified with: the Secure Boot authority
11    every boot-unit section, systemd-stub style: EV_IPL of ``name\\0`` then of the content
15    the verity root hash (pcrfs' file-system identity role), then the lock event after
      the data volume is unlocked (systemd measures the volume key here)
====  =====================================================================================

A separator (EV_SEPARATOR, four zero bytes) closes PCRs 0, 4 and 7 when the ROM hands
over, as UEFI firmware does before ExitBootServices.
"""

from __future__ import annotations

from collections.abc import Iterable

from bastion.formats import eventlog as el
from bastion.tpm.base import PcrSelection

PCR_ROM = 0
PCR_LOADER = 4
PCR_AUTHORITY = 7
PCR_UNIT = 11
PCR_ROOT = 15
PCR_LOCK = 15

ROM_VERSION = b"bastion sim ROM 1\0"
LOCK_EVENT = b"bastion:volume-unlocked\0"

#: PCRs a data-volume key is sealed to: the whole chain up to (not including) the lock
SEAL_PCRS = (PCR_ROM, PCR_LOADER, PCR_AUTHORITY, PCR_UNIT, PCR_ROOT)
#: PCRs ``bastion image pcrs`` reports
GOLDEN_PCRS = SEAL_PCRS


def seal_selection() -> PcrSelection:
    """The sha256 PCR selection sealed data-volume keys are bound to."""
    return PcrSelection.parse("sha256:" + ",".join(str(i) for i in SEAL_PCRS))


def _separator(pcr: int) -> el.Event:
    return el.measure(pcr, el.EventType.EV_SEPARATOR, bytes(4))


def rom_events(platform_key_hash: bytes, loader: bytes) -> list[el.Event]:
    """ROM: its own version, the fused authority, the loader, then separators."""
    return [
        el.measure(PCR_ROM, el.EventType.EV_S_CRTM_VERSION, ROM_VERSION),
        el.measure(
            PCR_AUTHORITY, el.EventType.EV_IPL, b"bastion:platform-key\0", platform_key_hash
        ),
        el.measure(PCR_LOADER, el.EventType.EV_IPL, b"bastion:bootloader\0", loader),
        _separator(PCR_ROM),
        _separator(PCR_LOADER),
        _separator(PCR_AUTHORITY),
    ]


def unit_events(sections: Iterable[tuple[str, bytes]]) -> list[el.Event]:
    """Bootloader: each boot-unit section as systemd-stub measures UKI sections."""
    events = []
    for name, content in sections:
        tag = name.encode("ascii") + b"\0"
        events.append(el.measure(PCR_UNIT, el.EventType.EV_IPL, tag))
        events.append(el.measure(PCR_UNIT, el.EventType.EV_IPL, tag, content))
    return events


def root_events(root_hash: bytes) -> list[el.Event]:
    """initrd: the verity root hash of the root file system about to be mounted."""
    return [el.measure(PCR_ROOT, el.EventType.EV_IPL, b"bastion:verity-root\0", root_hash)]


def lock_events() -> list[el.Event]:
    """initrd, after the data volume is unlocked: close the sealing policy until reboot."""
    return [el.measure(PCR_LOCK, el.EventType.EV_IPL, LOCK_EVENT)]


def boot_events(
    platform_key_hash: bytes,
    loader: bytes,
    sections: Iterable[tuple[str, bytes]],
    root_hash: bytes,
) -> list[el.Event]:
    """Every event of a successful boot, in order (what ``image pcrs`` replays)."""
    return (
        rom_events(platform_key_hash, loader)
        + unit_events(sections)
        + root_events(root_hash)
        + lock_events()
    )


def predict(events: Iterable[el.Event]) -> dict[int, bytes]:
    """PCR values (sha256 bank) after ``events``, every GOLDEN_PCR present."""
    values = el.replay(events)
    return {i: values.get(i, bytes(32)) for i in sorted(set(GOLDEN_PCRS) | set(values))}
