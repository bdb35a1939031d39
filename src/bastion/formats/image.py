"""The bastion disk image layout: partition names, slots, entry names, reserved
command-line words. Pure: names and constants shared by the builder
(build/efi_image.py), the offline verifier (trust/image.py), the file reader
(storage/disk_image.py), the sim boot chain (device/boot/) and the updater
(device/update/). No I/O.

The disk that UEFI, QEMU and the sim boot (GPT, Discoverable Partitions Specification
type GUIDs, every partition on a MiB boundary)::

    esp               ESP        systemd-boot, loader.conf, EFI/Linux/bastion-1-a+3-0.efi
    root-a, root-a-verity        slot a (PARTUUIDs from the root hash)
    root-b, root-b-verity        slot b (no-auto until an update fills it)
    data              linux      the LUKS2 data volume (signed PCR 11 policy)
"""

from __future__ import annotations

from bastion.limits import MiB

IMAGE_PAYLOAD_TYPE = "application/vnd.bastion.disk-image+json"
#: the EFI System Partition of the EFI image (build/efi_image.py, ADR 0027)
PART_ESP = "esp"
PART_DATA = "data"
#: the A/B slots, in the order the builder and the verifier visit them
SLOTS = ("a", "b")
#: the dm-verity data and hash block size bastion uses: a root slot is a multiple of it
VERITY_BLOCK = 4096
#: command-line parameters the boot chain sets or reads itself, and why; ``--cmdline``
#: may not set them (a second ``roothash=`` or a ``root=`` would point past verity)
RESERVED_CMDLINE = {
    "roothash": "the verity root hash of the slot, set by bastion",
    "usrhash": "a verity /usr hash would bypass bastion's signed root",
    "root": "the root device is the verity device bastion opens from roothash=",
    "mount.usr": "a /usr mount outside the signed root",
    "systemd.verity": "verity is set up by bastion from the signed command line",
    "rd.systemd.verity": "verity is set up by bastion from the signed command line",
}
RESERVED_CMDLINE_PREFIXES = {
    "bastion.": "bastion's own parameters",
    "systemd.verity_": "verity is set up by bastion from the signed command line",
    "rd.systemd.verity_": "verity is set up by bastion from the signed command line",
}


def entry_name(slot: str, generation: int = 1) -> str:
    """The Boot Loader Specification entry name of a slot's UKI: ``bastion-GEN-SLOT``,
    the generation growing with each install so the newest sorts first (the naming
    device/update/slots.py reads); the factory image is generation 1."""
    return f"bastion-{generation}-{slot}"


def is_slot_entry(filename: str, slot: str) -> bool:
    """True when ``filename`` is a UKI entry of ``slot`` (any generation, counted or not)."""
    stem = filename.removesuffix(".efi").rsplit("+", 1)[0]
    head, _, tail = stem.rpartition("-")
    gen = head.removeprefix("bastion-")
    return (
        filename.endswith(".efi")
        and head.startswith("bastion-")
        and gen.isdigit()
        and (tail == slot)
    )


def root_part(slot: str) -> str:
    return f"root-{slot}"


def verity_part(slot: str) -> str:
    return f"root-{slot}-verity"


def mib_align(n: int) -> int:
    """``n`` rounded up to a whole MiB."""
    return (n + MiB - 1) // MiB * MiB
