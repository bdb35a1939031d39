"""Foreign on-disk signatures in the first bytes of a device, as blkid's probes see them.

Pure: ``probe(head)`` takes the first :data:`PROBE_SIZE` bytes (or fewer, for a small
device) and names the filesystems, volume-manager labels, swap areas and partition tables
whose magic it finds there. LUKS itself is not reported (cryptsetup filters
``crypto_LUKS`` out of the same probe). The checks follow libblkid's superblock and
partition probes for the formats an edge device meets: magic at the documented offset,
plus the one or two fields libblkid checks to keep a random byte pattern from matching.

cryptsetup refuses to fall back to a secondary LUKS2 header (and to auto-repair) while
such a signature is present; ``bastion luks format`` asks before writing over one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

PROBE_SIZE = 68 * 1024  # btrfs keeps its superblock at 64 KiB; swap's magic ends a 64 KiB page


def _at(head: bytes, offset: int, magic: bytes) -> bool:
    return head[offset : offset + len(magic)] == magic


def _ext(head: bytes) -> bool:
    # ext2/3/4 superblock at 1024: s_magic 0xEF53 (le16 at +56), s_rev_level <= 1 (+76),
    # s_log_block_size <= 6 (+24: 1 KiB << 6 = 64 KiB)
    if len(head) < 1024 + 80 or head[1024 + 56 : 1024 + 58] != b"\x53\xef":
        return False
    (log_block,) = struct.unpack_from("<I", head, 1024 + 24)
    (rev,) = struct.unpack_from("<I", head, 1024 + 76)
    return bool(log_block <= 6 and rev <= 1)


def _xfs(head: bytes) -> bool:
    # "XFSB", then a power-of-two block size 512..65536 (be32 at +4)
    if not _at(head, 0, b"XFSB") or len(head) < 8:
        return False
    (block,) = struct.unpack_from(">I", head, 4)
    return bool(512 <= block <= 65536 and block & (block - 1) == 0)


def _vfat(head: bytes) -> bool:
    # boot sector signature and a FAT type string where FAT12/16 or FAT32 keep it
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return False
    return head[54:57] == b"FAT" or head[82:87] == b"FAT32" or _at(head, 3, b"MSDOS")


def _lvm2(head: bytes) -> bool:
    # physical-volume label in one of the first four sectors: "LABELONE" ... "LVM2 001"
    return any(
        _at(head, s * 512, b"LABELONE") and _at(head, s * 512 + 24, b"LVM2 001") for s in range(4)
    )


def _swap(head: bytes) -> bool:
    return any(
        _at(head, page - 10, b"SWAPSPACE2") or _at(head, page - 10, b"SWAP-SPACE")
        for page in (4096, 8192, 16384, 65536)
    )


def _dos(head: bytes) -> bool:
    # an MBR: 0x55AA, no FAT boot sector, and four entries whose boot flags are 0 or 0x80
    # with at least one partition type set
    if len(head) < 512 or head[510:512] != b"\x55\xaa" or _vfat(head):
        return False
    entries = [head[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    return all(e[0] in (0, 0x80) for e in entries) and any(e[4] for e in entries)


_PROBES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("ext4", _ext),  # ext2/ext3/ext4 share the superblock; blkid tells them apart by features
    ("xfs", _xfs),
    ("vfat", _vfat),
    ("btrfs", lambda h: _at(h, 65536 + 64, b"_BHRfS_M")),
    ("LVM2_member", _lvm2),
    ("swap", _swap),
    ("f2fs", lambda h: _at(h, 1024, b"\x10\x20\xf5\xf2")),
    ("squashfs", lambda h: _at(h, 0, b"hsqs")),
    ("iso9660", lambda h: _at(h, 32769, b"CD001")),
    ("ntfs", lambda h: _at(h, 3, b"NTFS    ")),
    ("gpt", lambda h: _at(h, 512, b"EFI PART")),
    ("dos", _dos),
)


def probe(head: bytes) -> tuple[str, ...]:
    """Names (blkid's TYPE/PTTYPE) of the foreign signatures in ``head``, in probe order."""
    return tuple(name for name, check in _PROBES if check(head))
