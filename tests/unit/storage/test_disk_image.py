"""storage/disk_image.py over a bare GPT (formats/image.py's plan): partitions by name,
writes refused past a partition, GPT repair; and the boot-archive trimming table."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bastion.errors import FormatError
from bastion.formats import bootunit as bu
from bastion.formats import image as fi
from bastion.limits import MiB
from bastion.storage.disk_image import DiskImage, file_sha256

SEED = hashlib.sha256(b"seed").digest()
ROOT_HASH = hashlib.sha256(b"root").digest()


def _disk(tmp_path: Path) -> DiskImage:
    layout = fi.plan_layout(
        SEED, ROOT_HASH, boot_size=MiB, root_size=MiB, verity_size=MiB, data_size=2 * MiB
    )
    path = tmp_path / "disk.img"
    with open(path, "wb") as handle:
        handle.truncate(layout.size)
        handle.seek(0)
        handle.write(layout.head_bytes())
        handle.seek(layout.tail_offset)
        handle.write(layout.tail_bytes())
    return DiskImage(path)


def test_partitions_by_name(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    names = [p.name for p in disk.layout().partitions]
    assert names[0] == fi.PART_BOOT and names[-1] == fi.PART_DATA
    assert fi.sig_part("b") in names and fi.verity_part("a") in names
    disk.write_partition(fi.PART_BOOTCTL, 10, b"hello")
    assert disk.read_partition(fi.PART_BOOTCTL, 15) == bytes(10) + b"hello"
    part = disk.layout().find(fi.PART_BOOTCTL)
    assert disk.path.read_bytes()[part.offset + 10 : part.offset + 15] == b"hello"
    assert disk.size() == disk.path.stat().st_size
    assert (
        disk.sha256() == file_sha256(disk.path) == hashlib.sha256(disk.path.read_bytes()).digest()
    )
    assert disk.read_signature() is None


#: (partition, offset, length), offsets < 0 counted back from the partition's end + 1
OUTSIDE = [
    (fi.PART_BOOTCTL, -1, 1),  # before the start
    (fi.PART_BOOTCTL, "end", 1),  # at the end
    (fi.PART_BOOTCTL, "end-4", 5),  # across the end
    (fi.PART_BOOTCTL, 0, "size+1"),  # longer than the partition
    ("no-such-partition", 0, 1),
]


@pytest.mark.parametrize(("name", "where", "count"), OUTSIDE)
def test_write_outside_a_partition_is_refused(
    tmp_path: Path, name: str, where: int | str, count: int | str
) -> None:
    disk = _disk(tmp_path)
    size = disk.layout().find(fi.PART_BOOTCTL).size
    offset = {"end": size, "end-4": size - 4}.get(str(where), where)
    length = {"size+1": size + 1}.get(str(count), count)
    assert isinstance(offset, int) and isinstance(length, int)
    before = disk.path.read_bytes()
    with pytest.raises(FormatError):
        disk.write_partition(name, offset, b"x" * length)
    assert disk.path.read_bytes() == before


def test_repair_rewrites_a_damaged_primary(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    with open(disk.path, "r+b") as handle:
        handle.seek(512 + 16)  # the primary header's CRC
        handle.write(b"\xff\xff\xff\xff")
    layout, repaired = disk.repair_layout()
    assert len(repaired) == 1 and repaired[0].startswith("primary GPT header damaged")
    assert disk.repair_layout() == (layout, [])


def _archive() -> bytes:
    return bu.Container(bu.Kind.ARCHIVE, (("loader", b"L" * 9), ("loader.key", b"K"))).to_bytes()


def test_parse_archive_ignores_padding() -> None:
    raw = _archive()
    archive = fi.parse_archive(raw + bytes(4096))
    assert archive.get("loader") == b"L" * 9
    assert fi.trim_archive(raw + bytes(100)) == raw


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes(4096),  # an empty partition
        b"NOTANARC" + bytes(100),
        _archive()[:12] + (10**6).to_bytes(4, "little") + bytes(64),  # table past the end
        _archive()[: len(_archive()) - 8],  # the last entry runs past the end
    ],
)
def test_parse_archive_refuses(raw: bytes) -> None:
    with pytest.raises(FormatError):
        fi.parse_archive(raw)
