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
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import FormatError
from bastion.formats import bootunit as bu
from bastion.formats import gpt
from bastion.formats.image import PART_BOOT, parse_archive
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


def gpt_ends(path: Path) -> tuple[bytes, bytes, int]:
    """The bytes of the primary and the backup GPT copies, and the disk's sector count."""
    size = path.stat().st_size
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


def read_partition(path: Path, part: gpt.Partition, limit: int | None = None) -> bytes:
    """The bytes of one partition (the first ``limit`` bytes when given)."""
    with open(path, "rb") as handle:
        handle.seek(part.offset)
        return handle.read(part.size if limit is None else min(limit, part.size))


def read_archive(path: Path, layout: gpt.GptDisk) -> bu.Container:
    """The boot partition archive (trailing zero padding of the partition ignored)."""
    return parse_archive(read_partition(path, layout.find(PART_BOOT)))


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
        """The image's size in bytes."""
        return self.path.stat().st_size

    def sha256(self) -> bytes:
        """SHA-256 of the whole image."""
        return file_sha256(self.path)

    def layout(self) -> gpt.GptDisk:
        return read_layout(self.path)

    def repair_layout(self) -> tuple[gpt.GptDisk, list[str]]:
        return repair_layout(self.path)

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
