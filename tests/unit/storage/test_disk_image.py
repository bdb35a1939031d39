"""storage/disk_image.py over a bare GPT with the product image's partition names:
partitions by name, writes refused past a partition, GPT repair."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from bastion.errors import ConflictError, FormatError, NotFoundError
from bastion.formats import gpt
from bastion.formats import image as fi
from bastion.limits import MiB
from bastion.storage.disk_image import DiskImage, file_sha256, gpt_ends, plan_partition_uuids

SEED = hashlib.sha256(b"seed").digest()
ROOT_HASH = hashlib.sha256(b"root").digest()


def _disk(tmp_path: Path) -> DiskImage:
    root_uuid, verity_uuid = gpt.verity_partition_uuids(ROOT_HASH)
    spans = [
        (fi.PART_ESP, gpt.TYPE_ESP, gpt.derived_uuid("esp", SEED), MiB),
        (fi.root_part("a"), gpt.TYPE_ROOT_X86_64, root_uuid, MiB),
        (fi.verity_part("a"), gpt.TYPE_ROOT_VERITY_X86_64, verity_uuid, MiB),
        (fi.root_part("b"), gpt.TYPE_ROOT_X86_64, gpt.derived_uuid("root-b", SEED), MiB),
        (fi.verity_part("b"), gpt.TYPE_ROOT_VERITY_X86_64, gpt.derived_uuid("v-b", SEED), MiB),
        (fi.PART_DATA, gpt.TYPE_LINUX_DATA, gpt.derived_uuid("data", SEED), 2 * MiB),
    ]
    parts, lba = [], MiB // gpt.SECTOR
    for name, tguid, pguid, size in spans:
        sectors = size // gpt.SECTOR
        parts.append(gpt.Partition(tguid, pguid, lba, lba + sectors - 1, 0, name))
        lba += sectors
    layout = gpt.GptDisk(lba + MiB // gpt.SECTOR, gpt.derived_uuid("disk", SEED), tuple(parts))
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
    assert names[0] == fi.PART_ESP and names[-1] == fi.PART_DATA
    assert fi.verity_part("b") in names and fi.verity_part("a") in names
    disk.write_partition(fi.PART_DATA, 10, b"hello")
    assert disk.read_partition(fi.PART_DATA, 15) == bytes(10) + b"hello"
    part = disk.layout().find(fi.PART_DATA)
    assert disk.path.read_bytes()[part.offset + 10 : part.offset + 15] == b"hello"
    assert disk.size() == disk.path.stat().st_size
    assert (
        disk.sha256() == file_sha256(disk.path) == hashlib.sha256(disk.path.read_bytes()).digest()
    )
    assert disk.read_signature() is None


#: (partition, offset, length), offsets < 0 counted back from the partition's end + 1
OUTSIDE = [
    (fi.PART_DATA, -1, 1),  # before the start
    (fi.PART_DATA, "end", 1),  # at the end
    (fi.PART_DATA, "end-4", 5),  # across the end
    (fi.PART_DATA, 0, "size+1"),  # longer than the partition
    ("no-such-partition", 0, 1),
]


@pytest.mark.parametrize(("name", "where", "count"), OUTSIDE)
def test_write_outside_a_partition_is_refused(
    tmp_path: Path, name: str, where: int | str, count: int | str
) -> None:
    disk = _disk(tmp_path)
    size = disk.layout().find(fi.PART_DATA).size
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


# --- PARTUUIDs of a filled slot (set_partition_uuids) ----------------------------------------

NEW_HASH = hashlib.sha256(b"root of slot b").digest()


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"nope": gpt.derived_uuid("x", SEED)}, NotFoundError, "no partition(s) ['nope']"),
        # slot a's PARTUUIDs (the same root twice): the DPS lookup would be ambiguous
        (
            {fi.root_part("b"): gpt.verity_partition_uuids(ROOT_HASH)[0]},
            ConflictError,
            "already partition 'root-a'",
        ),
        (
            {fi.root_part("b"): gpt.derived_uuid("x", SEED),
             fi.verity_part("b"): gpt.derived_uuid("x", SEED)},
            ConflictError,
            "two partitions",
        ),
    ],
)  # fmt: skip
def test_set_partition_uuids_refusals_write_nothing(
    tmp_path: Path, changes: dict[str, object], error: type[Exception], words: str
) -> None:
    disk = _disk(tmp_path)
    before = file_sha256(disk.path)
    with pytest.raises(error, match=re.escape(words)):
        disk.set_partition_uuids(changes)  # type: ignore[arg-type]
    assert file_sha256(disk.path) == before


def test_set_partition_uuids_rewrites_both_copies(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    root_uuid, verity_uuid = gpt.verity_partition_uuids(NEW_HASH)
    changes = {fi.root_part("b"): root_uuid, fi.verity_part("b"): verity_uuid}
    new = disk.set_partition_uuids(changes)
    assert new.find(fi.root_part("b")).part_guid == root_uuid
    head, tail, sectors = gpt_ends(disk.path)
    for copy in (gpt.parse(head, sectors), gpt.parse_backup(tail, sectors)):
        assert {p.name: p.part_guid for p in copy.partitions if p.name in changes} == changes
        assert copy.find(fi.root_part("a")).part_guid == gpt.verity_partition_uuids(ROOT_HASH)[0]
    # the same UUIDs again write nothing
    before = file_sha256(disk.path)
    disk.set_partition_uuids(changes)
    assert file_sha256(disk.path) == before


def _copies(disk: DiskImage) -> tuple[gpt.GptDisk | None, gpt.GptDisk | None]:
    """Each GPT copy as parsed on its own (None: damaged)."""
    head, tail, sectors = gpt_ends(disk.path)
    out: list[gpt.GptDisk | None] = []
    for parse in (lambda: gpt.parse(head, sectors), lambda: gpt.parse_backup(tail, sectors)):
        try:
            out.append(parse())
        except FormatError:
            out.append(None)
    return out[0], out[1]


def test_set_partition_uuids_cut_anywhere_reads_old_or_new_then_finishes(tmp_path: Path) -> None:
    """A power cut before any sector of the rewrite (backup copy, then primary; a torn
    write keeps a prefix of whole sectors): the layout read is the old or the new one,
    never a mix or an error, and running the rewrite again leaves both copies intact
    and new. The torn primary after a new backup is the case an "unchanged: write
    nothing" check on the layout read would leave damaged."""
    disk = _disk(tmp_path)
    old = disk.layout()
    head0, tail0, _ = gpt_ends(disk.path)
    root_uuid, verity_uuid = gpt.verity_partition_uuids(NEW_HASH)
    changes = {fi.root_part("b"): root_uuid, fi.verity_part("b"): verity_uuid}
    plan = plan_partition_uuids(disk.path, changes)
    assert [off for off, _ in plan.writes] == [old.tail_offset, 0]  # backup first
    cuts = [
        (done, sectors)
        for done in range(len(plan.writes))
        for sectors in range(len(plan.writes[done][1]) // gpt.SECTOR)
    ]
    assert len(cuts) == 33 + 34
    torn_primary_repaired = 0
    for done, sectors in cuts:
        with disk.path.open("r+b") as f:  # back to the old disk
            f.write(head0)
            f.seek(old.tail_offset)
            f.write(tail0)
            for offset, data in plan.writes[:done]:
                f.seek(offset)
                f.write(data)
            offset, data = plan.writes[done]
            f.seek(offset)
            f.write(data[: sectors * gpt.SECTOR])
        assert disk.layout() in (old, plan.layout), (done, sectors)
        primary, backup = _copies(disk)
        torn_primary_repaired += done == 1 and primary is None and backup == plan.layout
        assert disk.set_partition_uuids(changes) == plan.layout
        assert _copies(disk) == (plan.layout, plan.layout), (done, sectors)
    assert torn_primary_repaired > 0


def test_plan_partition_uuids_repairs_only_the_damaged_copy(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    root_uuid, verity_uuid = gpt.verity_partition_uuids(NEW_HASH)
    changes = {fi.root_part("b"): root_uuid, fi.verity_part("b"): verity_uuid}
    new = disk.set_partition_uuids(changes)
    with disk.path.open("r+b") as f:  # one flipped bit in the primary header's CRC
        f.seek(gpt.SECTOR + 16)
        byte = f.read(1)
        f.seek(gpt.SECTOR + 16)
        f.write(bytes([byte[0] ^ 1]))
    plan = plan_partition_uuids(disk.path, changes)
    assert plan.layout == new
    assert plan.writes == ((0, new.head_bytes()),)
