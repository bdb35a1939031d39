"""GPT verdicts against sfdisk (util-linux libfdisk), case by case.

Two tables. SFDISK_MADE: disks laid out by sfdisk itself (edge layouts included) must
parse in bastion with exactly the partitions ``sfdisk --json`` lists. HAND_MADE: tables
written here byte by byte (not by bastion's writer) with overlapping, out-of-range or
odd header fields; each row records sfdisk's verdict as observed (``ok``: a GPT and
"No errors detected"; ``error``: a GPT but ``--verify`` reports errors; ``no-gpt``:
libfdisk refuses the GPT and falls back to the protective MBR) and bastion's. The rule
checked on every row: bastion refuses only what sfdisk also refuses, or a layout where a
partition or the usable range overlaps the GPT's own structures (``overlap``).
"""

from __future__ import annotations

import json
import struct
import subprocess
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need_tool

from bastion.errors import FormatError
from bastion.formats import gpt
from bastion.storage.disk_image import read_layout

pytestmark = pytest.mark.interop

SECTORS = 8192
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def _sfdisk_json(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [need_tool("sfdisk"), "--json", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["partitiontable"]  # type: ignore[no-any-return]


def _sfdisk_verdict(path: Path) -> str:
    table = _sfdisk_json(path)
    if table["label"] != "gpt":
        return "no-gpt"
    verify = subprocess.run(
        [need_tool("sfdisk"), "--verify", str(path)], capture_output=True, text=True, check=False
    )
    return "ok" if "No errors detected" in verify.stdout else "error"


def _ours(disk: gpt.GptDisk) -> list[tuple[int, int, str, str, str]]:
    return [
        (p.first_lba, p.last_lba - p.first_lba + 1, str(p.type_guid), str(p.part_guid), p.name)
        for p in disk.partitions
    ]


def _theirs(table: dict[str, Any]) -> list[tuple[int, int, str, str, str]]:
    return [
        (p["start"], p["size"], p["type"].lower(), p["uuid"].lower(), p.get("name", ""))
        for p in table.get("partitions", [])
    ]


SFDISK_MADE = {
    "default": "label: gpt\n,1M\n,2M\n",
    "ends-at-last-usable": "label: gpt\n,1M\n,\n",  # the last one takes the rest
    "table-length-4": "label: gpt\ntable-length: 4\n,1M\n,\n",
    "table-length-1-first-lba-3": "label: gpt\ntable-length: 1\nfirst-lba: 3\n,\n",
    "table-length-256": "label: gpt\ntable-length: 256\n,1M\n,\n",
    "table-length-1024": "label: gpt\ntable-length: 1024\nfirst-lba: 2048\n,1M\n",
    "gaps": "label: gpt\nstart=2048, size=100\nstart=3000, size=10\nstart=6000, size=1\n",
    "unsorted": "label: gpt\nstart=5000, size=100\nstart=2048, size=100, name=b\n"
    "start=4000, size=50\n",
    "custom-usable-range": "label: gpt\nfirst-lba: 100\nlast-lba: 7000\nstart=100, size=6901\n",
    "one-sector": "label: gpt\nstart=2048, size=1\n",
    "empty": "label: gpt\n",
    "names-and-attrs": 'label: gpt\nstart=2048, size=64, name="root-a", attrs="GUID:60,63"\n',
    "full-128": "label: gpt\n" + "".join(f"start={40 + i}, size=1\n" for i in range(128)),
}


@pytest.mark.parametrize("name", sorted(SFDISK_MADE))
def test_sfdisk_made_disks_parse(tmp_path: Path, name: str) -> None:
    path = tmp_path / "disk.img"
    with open(path, "wb") as handle:
        handle.truncate(SECTORS * gpt.SECTOR)
    subprocess.run(
        [need_tool("sfdisk"), "-q", "--no-reread", "--no-tell-kernel", str(path)],
        input=SFDISK_MADE[name],
        text=True,
        check=True,
        capture_output=True,
    )
    table = _sfdisk_json(path)
    assert _sfdisk_verdict(path) == "ok"
    disk = read_layout(path)
    assert _ours(disk) == _theirs(table)
    assert (disk.first_usable, disk.last_usable) == (table["firstlba"], table["lastlba"])
    assert disk.num_entries == int(table.get("table-length", 128))
    # and back: bastion's writer keeps the geometry, sfdisk reads the same partitions
    image = bytearray(path.read_bytes())
    head = disk.head_bytes()
    image[: len(head)] = head
    image[disk.tail_offset :] = disk.tail_bytes()
    path.write_bytes(bytes(image))
    assert _theirs(_sfdisk_json(path)) == _theirs(table)
    assert _sfdisk_verdict(path) == "ok"


# --- hand-written tables ------------------------------------------------------------------


def _craft(
    path: Path,
    parts: tuple[tuple[int, int], ...] = ((2048, 4095),),
    nent: int = 128,
    esize: int = 128,
    fu: int | None = None,
    lu: int | None = None,
    hsize: int = 92,
    rev: int = 0x10000,
    reserved: int = 0,
    elba: int = 2,
    bak: int | None = None,
) -> None:
    """A GPT written field by field from UEFI 2.10 §5.3 (primary and backup)."""
    array_sectors = -(-nent * esize // gpt.SECTOR)
    fu = 2 + array_sectors if fu is None else fu
    lu = SECTORS - 2 - array_sectors if lu is None else lu
    array = bytearray(nent * esize)
    for i, (first, last) in enumerate(parts):
        array[i * esize : i * esize + 128] = struct.pack(
            "<16s16sQQQ72s",
            uuid.UUID(LINUX).bytes_le,
            uuid.UUID(int=i + 1).bytes_le,
            first,
            last,
            0,
            f"p{i}".encode("utf-16-le").ljust(72, b"\0"),
        )
    entries_crc = zlib.crc32(bytes(array))
    image = bytearray(SECTORS * gpt.SECTOR)
    image[446:462] = struct.pack("<B3sB3sII", 0, b"\0\2\0", 0xEE, b"\xff\xff\xff", 1, SECTORS - 1)
    image[510:512] = b"\x55\xaa"

    def header(current: int, other: int, entries_lba: int) -> bytes:
        fields: list[Any] = [b"EFI PART", rev, hsize, 0, reserved, current, other, fu, lu]
        fields += [uuid.UUID(int=99).bytes_le, entries_lba, nent, esize, entries_crc]
        raw = struct.pack("<8sIIIIQQQQ16sQIII", *fields).ljust(hsize, b"\0")
        fields[3] = zlib.crc32(raw[:hsize])
        return struct.pack("<8sIIIIQQQQ16sQIII", *fields).ljust(gpt.SECTOR, b"\0")

    image[gpt.SECTOR : 2 * gpt.SECTOR] = header(1, SECTORS - 1 if bak is None else bak, elba)
    image[elba * gpt.SECTOR : elba * gpt.SECTOR + len(array)] = array
    backup_lba = SECTORS - 1 - array_sectors
    image[backup_lba * gpt.SECTOR : backup_lba * gpt.SECTOR + len(array)] = array
    image[(SECTORS - 1) * gpt.SECTOR :] = header(SECTORS - 1, 1, backup_lba)
    path.write_bytes(bytes(image))


#: name -> (craft arguments, sfdisk verdict as observed, bastion accepts, why they differ)
HAND_MADE: dict[str, tuple[dict[str, Any], str, bool, str]] = {
    "plain": ({}, "ok", True, ""),
    "ends-at-last-usable": ({"parts": ((2048, SECTORS - 34),)}, "ok", True, ""),
    "unsorted": ({"parts": ((5000, 6000), (2048, 3000))}, "ok", True, ""),
    "one-sector": ({"parts": ((2048, 2048),)}, "ok", True, ""),
    "table-length-4": ({"nent": 4, "parts": ((3, 100),)}, "ok", True, ""),
    "header-size-93": ({"hsize": 93}, "ok", True, ""),
    "header-size-512": ({"hsize": 512}, "ok", True, ""),
    "revision-1.1": ({"rev": 0x10001}, "ok", True, ""),
    "revision-2.0": ({"rev": 0x20000}, "ok", True, ""),
    "reserved-nonzero": ({"reserved": 5}, "ok", True, ""),
    "entry-size-256": ({"esize": 256}, "ok", True, ""),
    "entry-size-200": ({"esize": 200}, "ok", True, ""),
    "entry-size-512": ({"esize": 512}, "ok", True, ""),
    "backup-lba-wrong": ({"bak": 5000}, "error", True, "bastion reads the intact backup"),
    "overlap": ({"parts": ((2048, 4095), (4000, 5000))}, "error", False, ""),
    "beyond-last-usable": ({"parts": ((2048, 8200),)}, "error", False, ""),
    "first-after-last": ({"parts": ((3000, 2048),)}, "error", False, ""),
    "first-usable-after-last": ({"fu": 5000, "lu": 4000, "parts": ()}, "no-gpt", False, ""),
    "last-usable-beyond-disk": ({"lu": 9000, "parts": ()}, "no-gpt", False, ""),
    "header-size-91": ({"hsize": 91}, "no-gpt", False, ""),
    "header-size-600": ({"hsize": 600}, "no-gpt", False, ""),
    "table-length-0": ({"nent": 0, "parts": ()}, "no-gpt", False, ""),
    "entry-size-64": ({"esize": 64}, "ok", False, "overlap: 64-byte slots overlap the entries"),
    "partition-in-primary-array": (
        {"parts": ((10, 100),)},
        "ok",
        False,
        "overlap: the partition covers the primary entry array (LBA 2..33)",
    ),
    "usable-range-over-primary-array": (
        {"fu": 20, "parts": ((20, 100),)},
        "ok",
        False,
        "overlap: first usable LBA 20 is inside the primary entry array",
    ),
    "usable-range-over-backup-array": (
        {"lu": 8170, "parts": ((2048, 8170),)},
        "ok",
        False,
        "overlap: the partition covers the backup entry array (LBA 8159..8190)",
    ),
    "entry-array-inside-usable-range": (
        {"elba": 3000, "fu": 34, "parts": ((2048, 4000),)},
        "ok",
        True,
        "bastion refuses the primary (its array at LBA 3000 lies in the usable range and "
        "under the partition) and reads the intact backup",
    ),
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_hand_made_tables_compared_with_sfdisk(tmp_path: Path, name: str) -> None:
    kwargs, sfdisk_verdict, bastion_accepts, why = HAND_MADE[name]
    path = tmp_path / "disk.img"
    _craft(path, **kwargs)
    assert _sfdisk_verdict(path) == sfdisk_verdict
    try:
        disk = read_layout(path)
    except FormatError as exc:
        assert not bastion_accepts, f"bastion refused a table sfdisk reads: {exc}"
        assert sfdisk_verdict in ("error", "no-gpt") or why.startswith("overlap"), why
        return
    assert bastion_accepts, "bastion accepted a table it should refuse"
    assert _ours(disk) == _theirs(_sfdisk_json(path))
