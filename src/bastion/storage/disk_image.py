"""A bastion disk image in a file (or block device): read its GPT and partitions by name.

The I/O half of formats/image.py: find the two GPT copies, repair a damaged one from
the other (as UEFI firmware does), read and write partitions by name, hash the whole
file, and run the userspace dm-verity reader over a slot's root. It decides nothing
about trust: trust/image.py verifies what it reads (``DiskImage`` is the
``trust.image.ImageSource`` of an image file), and the sim platform
(device/platform/sim.py) is a ``DiskImage`` for the boot chain.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from bastion.errors import ConflictError, FormatError, NotFoundError
from bastion.formats import gpt
from bastion.limits import MiB
from bastion.storage.luks2_io import FileRange
from bastion.storage.verity_reader import VerityReader, verify_region


def file_sha256(path: Path) -> bytes:
    """SHA-256 of a whole file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(4 * MiB), b""):
            h.update(chunk)
    return h.digest()


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of an open file descriptor."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def device_size(path: Path) -> int:
    """The size of an image file or a block device (whose ``st_size`` is 0) in bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def gpt_ends(path: Path) -> tuple[bytes, bytes, int]:
    """The bytes of the primary and the backup GPT copies, and the disk's sector count."""
    size = device_size(path)
    if size % gpt.SECTOR:
        raise FormatError(f"image {path} size {size} is not a multiple of 512")
    sectors = size // gpt.SECTOR
    with open(path, "rb") as handle:
        head = handle.read(34 * gpt.SECTOR)
        try:  # a table longer than 128 entries: read as much as its header says
            need = gpt.head_length(head)
        except FormatError:
            need = len(head)
        if need > len(head):
            handle.seek(0)
            head = handle.read(min(need, size))
        handle.seek(max(0, size - 33 * gpt.SECTOR))
        tail = handle.read(33 * gpt.SECTOR)
        try:
            need = gpt.tail_length(tail)
        except FormatError:
            need = len(tail)
        if need > len(tail):
            handle.seek(max(0, size - need))
            tail = handle.read(need)
    return head, tail, sectors


def read_layout(path: Path) -> gpt.GptDisk:
    """Parse the GPT of an image file (backup used if the primary is damaged)."""
    head, tail, sectors = gpt_ends(path)
    return gpt.parse(head, sectors, tail)


def repair_layout(path: Path) -> tuple[gpt.GptDisk, list[str]]:
    """The image's GPT, with a damaged primary or backup copy rewritten from the other.

    Returns the layout and one line per copy repaired (empty when both were intact), so
    the caller can report it. A disk whose copies are both damaged raises FormatError.
    """
    head, tail, sectors = gpt_ends(path)
    layout = gpt.parse(head, sectors, tail)
    repaired: list[str] = []
    writes: list[tuple[bytes, int]] = []
    try:
        gpt.parse(head, sectors)
    except FormatError as exc:
        writes.append((layout.head_bytes(), 0))
        repaired.append(f"primary GPT header damaged ({exc}); rewritten from the backup")
    try:
        gpt.parse_backup(tail, sectors)
    except FormatError as exc:
        writes.append((layout.tail_bytes(), layout.tail_offset))
        repaired.append(f"backup GPT header damaged ({exc}); rewritten from the primary")
    if writes:
        fd = os.open(path, os.O_RDWR)
        try:
            for data, offset in writes:
                pwrite_all(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    return layout, repaired


@dataclass(frozen=True)
class GptRewrite:
    """What giving partitions new PARTUUIDs writes: the new layout and the copies that
    differ from it, as ``(offset, bytes)`` in the order they must reach the disk
    (backup first, then primary; empty when both copies already hold it)."""

    layout: gpt.GptDisk
    writes: tuple[tuple[int, bytes], ...]


def _copy_holds(parse: Callable[[], gpt.GptDisk], want: gpt.GptDisk) -> bool:
    try:
        return parse() == want
    except FormatError:  # a damaged copy (e.g. a write torn by a power cut) is rewritten
        return False


def plan_partition_uuids(path: Path, uuids: Mapping[str, uuid.UUID]) -> GptRewrite:
    """The writes that give the partitions named in ``uuids`` those PARTUUIDs (see
    :func:`set_partition_uuids`); reads the disk, writes nothing.

    Each copy is compared with the new layout on its own: a copy that is damaged or
    still old is in the plan, one that already holds the new layout is not. So a rewrite
    cut by a power failure anywhere (between the copies, or inside one) is finished by
    planning again, and a torn copy is repaired even when the other already says what
    is wanted."""
    head, tail, sectors = gpt_ends(path)
    layout = gpt.parse(head, sectors, tail)
    names = {p.name for p in layout.partitions}
    missing = sorted(set(uuids) - names)
    if missing:
        raise NotFoundError(f"image {path} has no partition(s) {missing}")
    wanted = set(uuids.values())
    if len(wanted) != len(uuids):
        raise ConflictError(f"one PARTUUID asked for two partitions: {dict(uuids)}")
    for part in layout.partitions:
        if part.name not in uuids and part.part_guid in wanted:
            raise ConflictError(
                f"PARTUUID {part.part_guid} is already partition {part.name!r}'s on {path}"
            )
    parts = tuple(
        replace(p, part_guid=uuids[p.name]) if p.name in uuids else p for p in layout.partitions
    )
    new = replace(layout, partitions=parts)
    writes: list[tuple[int, bytes]] = []
    if not _copy_holds(lambda: gpt.parse_backup(tail, sectors), new):
        writes.append((new.tail_offset, new.tail_bytes()))
    if not _copy_holds(lambda: gpt.parse(head, sectors), new):
        writes.append((0, new.head_bytes()))
    return GptRewrite(new, tuple(writes))


def set_partition_uuids(path: Path, uuids: Mapping[str, uuid.UUID]) -> gpt.GptDisk:
    """Give the partitions named in ``uuids`` those PARTUUIDs (as systemd-sysupdate does
    when it fills a slot: the Discoverable Partitions Specification finds a verity root
    and its hash partition by the PARTUUIDs its root hash gives).

    Both GPT copies are rewritten, backup first, each synced: a cut between the two
    leaves two valid tables, the primary (what UEFI firmware, the kernel and
    :func:`read_layout` read) still the old one; a write torn inside a copy leaves that
    copy damaged and the other intact, which they read instead. Calling it again with
    the same ``uuids`` finishes the job: it rewrites each copy that is old or damaged
    (:func:`plan_partition_uuids`) and writes nothing when both hold the new layout. A
    UUID another partition already has is refused (ConflictError): two partitions with
    one PARTUUID make the lookup ambiguous. Returns the new layout."""
    plan = plan_partition_uuids(path, uuids)
    if not plan.writes:
        return plan.layout
    fd = os.open(path, os.O_RDWR)
    try:
        for offset, data in plan.writes:
            pwrite_all(fd, data, offset)
            os.fsync(fd)
    finally:
        os.close(fd)
    return plan.layout


def read_partition(path: Path, part: gpt.Partition, limit: int | None = None) -> bytes:
    """The bytes of one partition (the first ``limit`` bytes when given)."""
    with open(path, "rb") as handle:
        handle.seek(part.offset)
        return handle.read(part.size if limit is None else min(limit, part.size))


@dataclass(frozen=True)
class DiskImage:
    """One image file, its partitions reached by name (the layout is read on each call,
    so a partition table rewritten in between is seen)."""

    path: Path

    @property
    def signature_path(self) -> Path:
        """``disk.img.sig``: the signed statement over the whole image."""
        return self.path.with_name(self.path.name + ".sig")

    def read_signature(self) -> bytes | None:
        """The image signature's bytes, or None when there is none."""
        if not self.signature_path.exists():
            return None
        return self.signature_path.read_bytes()

    def size(self) -> int:
        """The image's (or block device's) size in bytes."""
        return device_size(self.path)

    def sha256(self) -> bytes:
        """SHA-256 of the whole image."""
        return file_sha256(self.path)

    def layout(self) -> gpt.GptDisk:
        return read_layout(self.path)

    def repair_layout(self) -> tuple[gpt.GptDisk, list[str]]:
        return repair_layout(self.path)

    def set_partition_uuids(self, uuids: Mapping[str, uuid.UUID]) -> gpt.GptDisk:
        return set_partition_uuids(self.path, uuids)

    def read_partition(self, name: str, limit: int | None = None) -> bytes:
        return read_partition(self.path, self.layout().find(name), limit)

    def write_partition(self, name: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` inside partition ``name`` (refused past its end)."""
        part = self.layout().find(name)
        if offset < 0 or offset + len(data) > part.size:
            raise FormatError(
                f"write of {len(data)} bytes at {offset} runs past partition {name} "
                f"({part.size} bytes)"
            )
        with open(self.path, "r+b") as handle:
            handle.seek(part.offset + offset)
            handle.write(data)

    def partition_range(self, name: str) -> FileRange:
        """Partition ``name`` as block storage (for a LUKS2 volume); close it after use."""
        part = self.layout().find(name)
        return FileRange(self.path, offset=part.offset, size=part.size)

    def verify_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> None:
        """Check every block of the root partition against ``root_hash`` (raises)."""
        layout = self.layout()
        verify_region(
            self.path,
            self.path,
            root_hash,
            data_offset=layout.find(root).offset,
            hash_offset=layout.find(verity).offset,
            data_size=data_size,
        )

    def open_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> VerityReader:
        """The root partition through the verifying reader: each byte read is checked."""
        layout = self.layout()
        return VerityReader(
            self.path,
            self.path,
            root_hash,
            data_offset=layout.find(root).offset,
            hash_offset=layout.find(verity).offset,
            data_size=data_size,
        )
