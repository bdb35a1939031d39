"""GUID Partition Table codec: protective MBR, primary + backup headers and entries.

Pure: bytes in, frozen :class:`GptDisk` out, and :meth:`GptDisk.head_bytes` /
:meth:`GptDisk.tail_bytes` back (UEFI 2.10 §5.2-5.3). GUIDs are stored in the mixed-endian
encoding UEFI uses (``uuid.UUID.bytes_le``); integers are little-endian; both header CRC32s
and the entry-array CRC32 are checked on parse. The Discoverable Partitions Specification
type GUIDs and flag bits bastion uses are named here, together with the DPS rule that
derives the root and verity partition UUIDs from the root hash.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import uuid
import zlib
from dataclasses import dataclass

from bastion.errors import FormatError, LimitError
from bastion.limits import (
    GPT_ENTRY_SIZE_MAX,
    GPT_MAX_ENTRY_ARRAY_SIZE,
    GPT_MAX_PARTITION_ENTRIES,
)

SECTOR = 512
SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_SIZE = 92
ENTRY_SIZE = 128
NUM_ENTRIES = 128
ENTRY_ARRAY_SECTORS = NUM_ENTRIES * ENTRY_SIZE // SECTOR  # 32
_HDR = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes
_ENTRY = struct.Struct("<16s16sQQQ72s")  # 128 bytes

# --- Discoverable Partitions Specification (uapi-group) ---------------------------------
TYPE_ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
TYPE_XBOOTLDR = uuid.UUID("bc13c2ff-59e6-4262-a352-b275fd6f7172")
TYPE_ROOT_X86_64 = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
TYPE_ROOT_VERITY_X86_64 = uuid.UUID("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5")
TYPE_ROOT_VERITY_SIG_X86_64 = uuid.UUID("41092b05-9fc8-4523-994f-2def0408b176")
TYPE_LINUX_DATA = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
TYPE_VAR = uuid.UUID("4d21b016-b534-45c2-a9fb-5c16e091fd2d")

#: partition attribute bits (UEFI bit 0 = required; DPS bits 59/60/63)
FLAG_REQUIRED = 1 << 0
FLAG_GROWFS = 1 << 59
FLAG_READ_ONLY = 1 << 60
FLAG_NO_AUTO = 1 << 63


def guid_to_bytes(value: uuid.UUID) -> bytes:
    """The 16-byte on-disk (mixed-endian) encoding of a GUID."""
    return value.bytes_le


def guid_from_bytes(data: bytes) -> uuid.UUID:
    """Decode a 16-byte on-disk (mixed-endian) GUID."""
    if len(data) != 16:
        raise FormatError(f"GUID must be 16 bytes, got {len(data)}")
    return uuid.UUID(bytes_le=bytes(data))


def verity_partition_uuids(root_hash: bytes) -> tuple[uuid.UUID, uuid.UUID]:
    """DPS: (root partition UUID, verity partition UUID) = first / last 128 bits of the hash."""
    if len(root_hash) < 32:
        raise FormatError(f"root hash must be at least 32 bytes, got {len(root_hash)}")
    return uuid.UUID(bytes=root_hash[:16]), uuid.UUID(bytes=root_hash[-16:])


def derived_uuid(tag: str, seed: bytes) -> uuid.UUID:
    """A reproducible RFC 4122 version-4-shaped UUID from SHA-256(tag || seed)."""
    raw = bytearray(hashlib.sha256(tag.encode() + b"\0" + seed).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


@dataclass(frozen=True, slots=True)
class Partition:
    """One GPT entry. LBAs are inclusive, in 512-byte sectors."""

    type_guid: uuid.UUID
    part_guid: uuid.UUID
    first_lba: int
    last_lba: int
    attributes: int = 0
    name: str = ""

    @property
    def offset(self) -> int:
        """Byte offset of the partition in the disk."""
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        """Size of the partition in bytes."""
        return (self.last_lba - self.first_lba + 1) * SECTOR

    def to_bytes(self) -> bytes:
        """The 128-byte entry."""
        name = self.name.encode("utf-16-le")
        if len(name) > 72:
            raise FormatError(f"partition name {self.name!r} longer than 36 UTF-16 units")
        return _ENTRY.pack(
            guid_to_bytes(self.type_guid),
            guid_to_bytes(self.part_guid),
            self.first_lba,
            self.last_lba,
            self.attributes,
            name.ljust(72, b"\0"),
        )


def _array_sectors(num_entries: int, entry_size: int = ENTRY_SIZE) -> int:
    return -(-num_entries * entry_size // SECTOR)


@dataclass(frozen=True, slots=True)
class GptDisk:
    """A whole GPT: disk size, disk GUID and partitions (in entry-slot order).

    ``num_entries`` is the entry-array length (sfdisk ``table-length``); the usable
    range is ``first_usable_lba``..``last_usable_lba`` when given (a header read from a
    disk that another tool made), else the widest range the entry arrays leave.
    """

    total_sectors: int
    disk_guid: uuid.UUID
    partitions: tuple[Partition, ...]
    num_entries: int = NUM_ENTRIES
    first_usable_lba: int | None = None
    last_usable_lba: int | None = None
    entry_size: int = ENTRY_SIZE

    @property
    def entry_array_sectors(self) -> int:
        """Sectors one entry array takes."""
        return _array_sectors(self.num_entries, self.entry_size)

    @property
    def first_usable(self) -> int:
        if self.first_usable_lba is not None:
            return self.first_usable_lba
        return 2 + self.entry_array_sectors

    @property
    def last_usable(self) -> int:
        if self.last_usable_lba is not None:
            return self.last_usable_lba
        return self.total_sectors - 2 - self.entry_array_sectors

    @property
    def size(self) -> int:
        """Disk size in bytes."""
        return self.total_sectors * SECTOR

    def find(self, name: str) -> Partition:
        """The partition with this name (FormatError if absent)."""
        for part in self.partitions:
            if part.name == name:
                return part
        raise FormatError(f"GPT has no partition named {name!r}")

    def validate(self) -> None:
        """Check the layout: geometry, bounds, ordering, no overlap."""
        arrays = self.entry_array_sectors
        if not ENTRY_SIZE <= self.entry_size <= GPT_ENTRY_SIZE_MAX:
            raise LimitError(f"GPT entry size {self.entry_size}")
        if not 1 <= self.num_entries <= GPT_MAX_PARTITION_ENTRIES:
            raise LimitError(
                f"GPT of {self.num_entries} entries, limit 1..{GPT_MAX_PARTITION_ENTRIES}"
            )
        if self.total_sectors < 2 * (2 + arrays) + 1:
            raise FormatError(f"disk of {self.total_sectors} sectors is too small for a GPT")
        if self.first_usable < 2 + arrays:
            raise FormatError(
                f"GPT first usable LBA {self.first_usable} inside the primary entry array "
                f"(LBA 2..{1 + arrays})"
            )
        if self.last_usable > self.total_sectors - 2 - arrays:
            raise FormatError(
                f"GPT last usable LBA {self.last_usable} inside the backup entry array or "
                f"beyond the disk ({self.total_sectors} sectors)"
            )
        if self.first_usable > self.last_usable:
            raise FormatError(
                f"GPT first usable LBA {self.first_usable} beyond last usable {self.last_usable}"
            )
        if len(self.partitions) > self.num_entries:
            raise LimitError(f"{len(self.partitions)} partitions, table has {self.num_entries}")
        spans = []
        for part in self.partitions:
            if not self.first_usable <= part.first_lba <= part.last_lba <= self.last_usable:
                raise FormatError(
                    f"partition {part.name!r} LBAs {part.first_lba}..{part.last_lba} outside "
                    f"usable {self.first_usable}..{self.last_usable}"
                )
            spans.append((part.first_lba, part.last_lba, part.name))
        spans.sort()
        for (first, end, a), (start, last, b) in itertools.pairwise(spans):
            if start <= end:
                raise FormatError(
                    f"partitions {a!r} (LBA {first}..{end}) and {b!r} (LBA {start}..{last}) overlap"
                )

    def _entries(self) -> bytes:
        array = b"".join(p.to_bytes().ljust(self.entry_size, b"\0") for p in self.partitions)
        return array.ljust(self.entry_array_sectors * SECTOR, b"\0")

    def _header(self, current: int, backup: int, entries_lba: int, entries_crc: int) -> bytes:
        fields = [
            SIGNATURE,
            REVISION,
            HEADER_SIZE,
            0,
            0,
            current,
            backup,
            self.first_usable,
            self.last_usable,
            guid_to_bytes(self.disk_guid),
            entries_lba,
            self.num_entries,
            self.entry_size,
            entries_crc,
        ]
        raw = _HDR.pack(*fields)
        fields[3] = zlib.crc32(raw)
        return _HDR.pack(*fields).ljust(SECTOR, b"\0")

    def protective_mbr(self) -> bytes:
        """LBA 0: one 0xEE partition covering the disk (capped at 2^32-1 sectors)."""
        mbr = bytearray(SECTOR)
        size = min(self.total_sectors - 1, 0xFFFFFFFF)
        mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, size)
        mbr[510:512] = b"\x55\xaa"
        return bytes(mbr)

    def head_bytes(self) -> bytes:
        """LBA 0 .. first_usable-1: protective MBR, primary header, entry array."""
        self.validate()
        entries = self._entries()
        crc = zlib.crc32(entries[: self.num_entries * self.entry_size])
        header = self._header(1, self.total_sectors - 1, 2, crc)
        return self.protective_mbr() + header + entries

    def tail_bytes(self) -> bytes:
        """The last sectors: backup entry array then backup header (at the last LBA)."""
        self.validate()
        entries = self._entries()
        crc = zlib.crc32(entries[: self.num_entries * self.entry_size])
        last = self.total_sectors - 1
        header = self._header(last, 1, last - self.entry_array_sectors, crc)
        return entries + header

    @property
    def tail_offset(self) -> int:
        """Byte offset where :meth:`tail_bytes` goes."""
        return (self.total_sectors - 1 - self.entry_array_sectors) * SECTOR


@dataclass(frozen=True, slots=True)
class GptHeader:
    """A parsed GPT header (primary or backup)."""

    current_lba: int
    backup_lba: int
    first_usable: int
    last_usable: int
    disk_guid: uuid.UUID
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc: int

    @property
    def array_sectors(self) -> int:
        """Sectors the entry array this header describes takes."""
        return _array_sectors(self.num_entries, self.entry_size)


def parse_header(sector: bytes) -> GptHeader:
    """Parse and CRC-check one header sector (field checks that need no disk size)."""
    if len(sector) < HEADER_SIZE:
        raise FormatError(f"GPT header needs {HEADER_SIZE} bytes, got {len(sector)}")
    (sig, _rev, hsize, crc, _res, cur, bak, fu, lu, dguid, elba, nent, esize, ecrc) = _HDR.unpack(
        sector[:HEADER_SIZE]
    )
    if sig != SIGNATURE:
        raise FormatError(f"GPT header signature is {sig!r}, expected {SIGNATURE!r}")
    # the revision is not checked: sfdisk reads any (it prints "Header version: unknown")
    if not HEADER_SIZE <= hsize <= min(SECTOR, len(sector)):
        raise FormatError(f"GPT header size {hsize}, expected {HEADER_SIZE}..{SECTOR}")
    zeroed = sector[:16] + b"\0\0\0\0" + sector[20:hsize]
    if zlib.crc32(zeroed) != crc:
        raise FormatError(f"GPT header CRC32 {crc:#010x} does not match {zlib.crc32(zeroed):#010x}")
    if not 1 <= nent <= GPT_MAX_PARTITION_ENTRIES:
        raise LimitError(f"GPT declares {nent} entries, limit 1..{GPT_MAX_PARTITION_ENTRIES}")
    if not ENTRY_SIZE <= esize <= GPT_ENTRY_SIZE_MAX:
        # UEFI says 128 * 2^n; sfdisk reads any stride, and a stride under 128 overlaps
        raise LimitError(f"GPT entry size {esize}, expected {ENTRY_SIZE}..{GPT_ENTRY_SIZE_MAX}")
    if nent * esize > GPT_MAX_ENTRY_ARRAY_SIZE:
        raise LimitError(f"GPT entry array of {nent * esize} bytes")
    if not fu <= lu:
        raise FormatError(f"GPT first usable LBA {fu} beyond last usable {lu}")
    return GptHeader(cur, bak, fu, lu, guid_from_bytes(dguid), elba, nent, esize, ecrc)


def _check_placement(header: GptHeader, total_sectors: int, primary: bool) -> None:
    """The header's own LBAs against the disk: where it is, its array, its usable range."""
    last = total_sectors - 1
    which = "primary" if primary else "backup"
    if header.last_usable >= last:
        raise FormatError(
            f"{which} GPT last usable LBA {header.last_usable} beyond the disk ({last} is last)"
        )
    if header.first_usable < 2:
        raise FormatError(f"{which} GPT first usable LBA {header.first_usable} < 2")
    if primary:
        if header.current_lba != 1:
            raise FormatError(f"primary GPT header says it is at LBA {header.current_lba}")
        if not header.last_usable < header.backup_lba <= last:
            raise FormatError(
                f"primary GPT header puts its backup at LBA {header.backup_lba}, expected "
                f"{header.last_usable + 1}..{last}"
            )
        if header.entries_lba < 2 or header.entries_lba + header.array_sectors > (
            header.first_usable
        ):
            raise FormatError(
                f"primary GPT entry array at LBA {header.entries_lba} "
                f"(+{header.array_sectors}) overlaps the header or the usable range "
                f"from LBA {header.first_usable}"
            )
    else:
        if header.current_lba != last:
            raise FormatError(f"backup GPT header says it is at LBA {header.current_lba}")
        if (
            header.entries_lba <= header.last_usable
            or header.entries_lba + header.array_sectors > last
        ):
            raise FormatError(
                f"backup GPT entry array at LBA {header.entries_lba} "
                f"(+{header.array_sectors}) overlaps the usable range or the header"
            )


def parse_entries(header: GptHeader, array: bytes) -> tuple[Partition, ...]:
    """Parse and CRC-check an entry array described by ``header``."""
    need = header.num_entries * header.entry_size
    if len(array) < need:
        raise FormatError(f"GPT entry array is {len(array)} bytes, header needs {need}")
    array = array[:need]
    if zlib.crc32(array) != header.entries_crc:
        raise FormatError(
            f"GPT entry array CRC32 {zlib.crc32(array):#010x} does not match header "
            f"{header.entries_crc:#010x}"
        )
    parts = []
    for i in range(header.num_entries):
        raw = array[i * header.entry_size : i * header.entry_size + ENTRY_SIZE]
        tguid, pguid, first, last, attrs, name = _ENTRY.unpack(raw)
        if tguid == bytes(16):
            continue
        if first > last:
            raise FormatError(f"GPT entry {i}: first LBA {first} after last LBA {last}")
        if first < header.first_usable or last > header.last_usable:
            raise FormatError(
                f"GPT entry {i} LBAs {first}..{last} outside the usable range "
                f"{header.first_usable}..{header.last_usable}"
            )
        text = name.decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(
            Partition(guid_from_bytes(tguid), guid_from_bytes(pguid), first, last, attrs, text)
        )
    return tuple(parts)


def head_length(head: bytes) -> int:
    """Bytes from LBA 0 that :func:`parse` needs, read from the primary header in ``head``.

    ``head`` must hold at least LBA 0 and 1; the answer is bounded by the GPT limits.
    """
    if len(head) < 2 * SECTOR:
        raise FormatError(f"GPT head needs {2 * SECTOR} bytes, got {len(head)}")
    header = parse_header(head[SECTOR : 2 * SECTOR])
    if header.entries_lba > GPT_MAX_ENTRY_ARRAY_SIZE // SECTOR:
        raise LimitError(f"primary GPT entry array at LBA {header.entries_lba}")
    return (header.entries_lba + header.array_sectors) * SECTOR


def tail_length(last_sector: bytes) -> int:
    """Bytes at the end of the disk that :func:`parse` needs, from the backup header."""
    header = parse_header(last_sector[-SECTOR:])
    if header.current_lba - header.entries_lba > GPT_MAX_ENTRY_ARRAY_SIZE // SECTOR + 1:
        raise LimitError(f"backup GPT entry array at LBA {header.entries_lba}")
    return (header.current_lba - header.entries_lba + 1) * SECTOR


def _disk(header: GptHeader, total_sectors: int, parts: tuple[Partition, ...]) -> GptDisk:
    geometry = (header.num_entries, None, None, header.entry_size)
    default = GptDisk(total_sectors, header.disk_guid, parts, *geometry)
    disk = GptDisk(
        total_sectors,
        header.disk_guid,
        parts,
        header.num_entries,
        None if header.first_usable == default.first_usable else header.first_usable,
        None if header.last_usable == default.last_usable else header.last_usable,
        header.entry_size,
    )
    disk.validate()
    return disk


def parse_backup(tail: bytes, total_sectors: int) -> GptDisk:
    """The disk as its backup header and entries describe it (``tail``: the last sectors)."""
    header = parse_header(tail[-SECTOR:])
    _check_placement(header, total_sectors, primary=False)
    rel = header.entries_lba * SECTOR - (total_sectors - len(tail) // SECTOR) * SECTOR
    if rel < 0:
        raise FormatError(f"backup GPT entries at LBA {header.entries_lba} not in tail")
    return _disk(header, total_sectors, parse_entries(header, tail[rel:]))


def parse(head: bytes, total_sectors: int, tail: bytes | None = None) -> GptDisk:
    """Parse a disk from its first sectors (``head``: MBR, primary header and entries).

    Validated as sfdisk reads a GPT: header fields and CRCs, the header and entry
    arrays placed where they say and clear of the usable range, every partition
    ``first <= last`` inside the usable range, and no two partitions overlapping.
    When the primary header or its entries are damaged and ``tail`` (the last sectors,
    backup entries and header) is given, the backup is used; a FormatError names what
    failed in both.
    """
    if total_sectors < 2 * (2 + 1) + 1:
        raise FormatError(f"disk of {total_sectors} sectors is too small for a GPT")
    if len(head) < 2 * SECTOR or head[510:512] != b"\x55\xaa":
        raise FormatError("no protective MBR signature 0x55AA at LBA 0")
    try:
        header = parse_header(head[SECTOR : 2 * SECTOR])
        _check_placement(header, total_sectors, primary=True)
        start = header.entries_lba * SECTOR
        return _disk(header, total_sectors, parse_entries(header, head[start:]))
    except FormatError as primary_error:
        if tail is None:
            raise
        try:
            return parse_backup(tail, total_sectors)
        except FormatError as backup_error:
            raise FormatError(f"primary GPT: {primary_error}; backup GPT: {backup_error}") from None
