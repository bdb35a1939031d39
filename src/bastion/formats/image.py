"""The bastion disk image layout: partition names, sizes, the GPT plan, the boot archive.

Pure: names and constants shared by the builder (build/image.py), the offline verifier
(trust/image.py), the file reader (storage/disk_image.py) and the boot chain
(device/boot.py), and the byte-level parsing of what the boot partition holds. No I/O.

The disk (GPT, Discoverable Partitions Specification type GUIDs, every partition on a
MiB boundary)::

    boot              XBOOTLDR   the boot archive (loader.key, loader(.sig), unit.X(.sig))
    root-a            root       slot a: the root filesystem (dm-verity data)
    root-a-verity     verity     slot a: superblock + hash tree
    root-a-verity-sig verity-sig slot a: PKCS#7 over the hex root hash (DPS signature)
    root-b ...                   slot b, the same three (no-auto until installed)
    bootctl           linux      boot control: two checksummed copies of the slot state
    data              linux      the LUKS2 data volume, sealed to the TPM on first boot
"""

from __future__ import annotations

import uuid

from bastion.errors import FormatError
from bastion.formats import bootunit as bu
from bastion.formats import gpt
from bastion.limits import MiB

IMAGE_PAYLOAD_TYPE = "application/vnd.bastion.disk-image+json"
LOADER_VERSION = bu.LOADER_VERSION
SIG_PART_SIZE = 16 * 1024
BOOTCTL_PART_SIZE = 64 * 1024

PART_BOOT = "boot"
PART_BOOTCTL = "bootctl"
PART_DATA = "data"
#: the A/B slots, in the order the builder and the verifier visit them
SLOTS = ("a", "b")
#: the boot archive's entries, in the order they are written
ARCHIVE_ORDER = (
    "loader.key",
    "loader",
    "loader.sig",
    "unit.a",
    "unit.a.sig",
    "unit.b",
    "unit.b.sig",
)
#: kernel command line word carrying the verity data block count (4 KiB blocks): the root
#: hash does not bind the count a superblock claims, so the signed command line does
VERITY_BLOCKS_PARAM = "bastion.verity_blocks"
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
    "bastion.": "bastion's own parameters (slot, verity block count)",
    "systemd.verity_": "verity is set up by bastion from the signed command line",
    "rd.systemd.verity_": "verity is set up by bastion from the signed command line",
}


def root_part(slot: str) -> str:
    return f"root-{slot}"


def verity_part(slot: str) -> str:
    return f"root-{slot}-verity"


def sig_part(slot: str) -> str:
    return f"root-{slot}-verity-sig"


def mib_align(n: int) -> int:
    """``n`` rounded up to a whole MiB."""
    return (n + MiB - 1) // MiB * MiB


def plan_layout(
    seed: bytes,
    root_hash: bytes,
    *,
    boot_size: int,
    root_size: int,
    verity_size: int,
    data_size: int,
) -> gpt.GptDisk:
    """The GPT for the given sizes (each partition starts on a MiB boundary)."""
    root_uuid, verity_uuid = gpt.verity_partition_uuids(root_hash)
    ro = gpt.FLAG_READ_ONLY
    na = gpt.FLAG_NO_AUTO
    d = gpt.derived_uuid
    spans: list[tuple[str, uuid.UUID, uuid.UUID, int, int]] = [
        (PART_BOOT, gpt.TYPE_XBOOTLDR, d("boot", seed), boot_size, 0),
        (root_part("a"), gpt.TYPE_ROOT_X86_64, root_uuid, root_size, ro),
        (verity_part("a"), gpt.TYPE_ROOT_VERITY_X86_64, verity_uuid, verity_size, ro),
        (sig_part("a"), gpt.TYPE_ROOT_VERITY_SIG_X86_64, d("sig-a", seed), SIG_PART_SIZE, ro),
        (root_part("b"), gpt.TYPE_ROOT_X86_64, d("root-b", seed), root_size, ro | na),
        (verity_part("b"), gpt.TYPE_ROOT_VERITY_X86_64, d("verity-b", seed), verity_size, ro | na),
        (sig_part("b"), gpt.TYPE_ROOT_VERITY_SIG_X86_64, d("sig-b", seed), SIG_PART_SIZE, ro | na),
        (PART_BOOTCTL, gpt.TYPE_LINUX_DATA, d("bootctl", seed), BOOTCTL_PART_SIZE, na),
        (PART_DATA, gpt.TYPE_LINUX_DATA, d("data", seed), data_size, na),
    ]
    parts = []
    lba = MiB // gpt.SECTOR
    for name, tguid, pguid, size, flags in spans:
        sectors = mib_align(size) // gpt.SECTOR
        parts.append(gpt.Partition(tguid, pguid, lba, lba + sectors - 1, flags, name))
        lba += sectors
    total = lba + MiB // gpt.SECTOR
    return gpt.GptDisk(total, gpt.derived_uuid("disk", seed), tuple(parts))


def trim_archive(raw: bytes) -> bytes:
    """Cut a container out of a zero-padded partition using its own entry table."""
    if len(raw) < 16 or raw[:8] != bu.MAGIC:
        raise FormatError("boot partition does not start with a bastion boot archive")
    count = int.from_bytes(raw[12:16], "little")
    end = 16 + 32 * count
    if end > len(raw):
        raise FormatError("boot archive entry table runs past the partition")
    for i in range(count):
        base = 16 + 32 * i + 16
        off = int.from_bytes(raw[base : base + 8], "little")
        size = int.from_bytes(raw[base + 8 : base + 16], "little")
        end = max(end, off + size)
    end = (end + 7) // 8 * 8
    if end > len(raw):
        raise FormatError("boot archive entries run past the partition")
    return raw[:end]


def parse_archive(partition: bytes) -> bu.Container:
    """The boot archive held by the boot partition's bytes (zero padding ignored)."""
    return bu.parse(trim_archive(partition), bu.Kind.ARCHIVE)


def verity_data_size(unit: bu.BootUnit) -> int:
    """The root's verity data size in bytes, from the signed command line."""
    text = unit.cmdline_params().get(VERITY_BLOCKS_PARAM, "")
    if not text.isdigit() or not 0 < int(text) < 1 << 40:
        raise FormatError(f"command line has no valid {VERITY_BLOCKS_PARAM}=")
    return int(text) * VERITY_BLOCK
