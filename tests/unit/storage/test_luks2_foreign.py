"""Never trust the secondary header over a foreign signature, nor over a LUKS1 header.

A damaged primary header with a filesystem, LVM2 label, swap area or partition table
where it was is what an overwritten volume looks like: bastion refuses to fall back to the
secondary copy (and so never writes a LUKS2 header back over the newcomer) unless asked
to repair; a damaged copy with no foreign signature still falls back, as cryptsetup does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from bastion.errors import FormatError
from bastion.formats.luks2 import HeaderCopy, KdfType
from bastion.storage.luks2_volume import FileRange, KdfSpec, Luks2Volume, read_header

MiB = 1 << 20
CHEAP = KdfSpec(KdfType.PBKDF2, iterations=1000)


def _volume(tmp_path: Path) -> Path:
    img = tmp_path / "v.img"
    with img.open("wb") as f:
        f.truncate(4 * MiB)
    with FileRange(img) as storage:
        Luks2Volume.format(storage, b"pw", kdf=CHEAP, sector_size=512, data_offset=2 * MiB)
    return img


def _patch(img: Path, offset: int, data: bytes) -> None:
    with img.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _ext4(img: Path) -> None:
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 24, 2)
    sb[56:58] = b"\x53\xef"
    struct.pack_into("<I", sb, 76, 1)
    _patch(img, 1024, bytes(sb))


def _lvm2(img: Path) -> None:
    _patch(img, 512, b"LABELONE" + bytes(16) + b"LVM2 001")


def _xfs(img: Path) -> None:
    _patch(img, 0, b"XFSB" + struct.pack(">I", 4096))


def _vfat(img: Path) -> None:
    _patch(img, 0, b"\xeb\x3c\x90mkfs.fat")
    _patch(img, 54, b"FAT16   ")
    _patch(img, 510, b"\x55\xaa")


def _swap(img: Path) -> None:
    _patch(img, 4086, b"SWAPSPACE2")


def _gpt(img: Path) -> None:
    _patch(img, 512, b"EFI PART")


FOREIGN: list[tuple[str, Callable[[Path], None]]] = [
    ("ext4", _ext4),
    ("LVM2_member", _lvm2),
    ("xfs", _xfs),
    ("vfat", _vfat),
    ("swap", _swap),
    ("gpt", _gpt),
]


@pytest.mark.parametrize(("name", "write"), FOREIGN, ids=[n for n, _ in FOREIGN])
def test_primary_overwritten_by_foreign_signature_is_refused(
    tmp_path: Path, name: str, write: Callable[[Path], None]
) -> None:
    img = _volume(tmp_path)
    write(img)  # also breaks the primary header (magic or checksum)
    before = img.read_bytes()
    with FileRange(img) as storage, pytest.raises(FormatError, match=f"signatures: {name}"):
        Luks2Volume.open(storage)
    assert img.read_bytes() == before  # nothing written


def test_secondary_damaged_with_foreign_signature_is_refused(tmp_path: Path) -> None:
    img = _volume(tmp_path)
    _patch(img, 16384 + 448, b"\xff" * 8)  # secondary checksum
    _patch(img, 65536 + 64, b"_BHRfS_M")  # btrfs superblock inside the keyslots area
    with FileRange(img) as storage, pytest.raises(FormatError, match="signatures: btrfs"):
        read_header(storage)


def test_signature_with_both_copies_valid_is_not_checked(tmp_path: Path) -> None:
    """cryptsetup probes only when a copy needs recovery; so does bastion."""
    img = _volume(tmp_path)
    _patch(img, 65536 + 64, b"_BHRfS_M")
    with FileRange(img) as storage:
        assert read_header(storage).stale is None


def test_damaged_copy_without_signature_still_falls_back(tmp_path: Path) -> None:
    img = _volume(tmp_path)
    _patch(img, 448, b"\xff" * 8)
    with FileRange(img) as storage:
        choice = read_header(storage)
    assert choice.stale is HeaderCopy.PRIMARY
    assert choice.winner.binary.copy is HeaderCopy.SECONDARY


def test_repair_on_request_overrides_the_signature(tmp_path: Path) -> None:
    img = _volume(tmp_path)
    _lvm2(img)
    with FileRange(img) as storage:
        vol = Luks2Volume.open(storage, repair=True)
        assert vol.stale_copy is None
        assert read_header(storage).stale is None  # both copies rewritten
        vol.unlock_passphrase(b"pw")


@pytest.mark.parametrize(("version", "text"), [(1, "LUKS1"), (3, "version 3")])
def test_other_luks_version_at_offset_zero_is_never_passed_over(
    tmp_path: Path, version: int, text: str
) -> None:
    img = _volume(tmp_path)
    _patch(img, 6, version.to_bytes(2, "big"))
    for repair in (False, True):
        with FileRange(img) as storage, pytest.raises(FormatError, match=text):
            read_header(storage, repair=repair)


def test_device_smaller_than_keyslots_area_is_refused(tmp_path: Path) -> None:
    img = _volume(tmp_path)
    with FileRange(img, size=1 * MiB) as storage, pytest.raises(FormatError, match="cannot hold"):
        read_header(storage)
