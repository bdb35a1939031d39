"""The boot-control partition: A/B slot state with tries left and a successful flag. Pure.

One record is 512 bytes, little-endian::

    0   8  magic "BSTNBCTL"
    8   4  version (1)
    12  8  sequence number (the valid copy with the higher one wins)
    20  1  active slot (0 = a, 1 = b)
    21  3  zero
    24  4 x 2 slots: priority u8, tries_left u8, successful u8, unbootable u8
    32  ... zero
    508 4  CRC32 of bytes 0..507

The partition holds two copies, at offset 0 and :data:`COPY_OFFSET`. Writers write the
copy that did *not* win with sequence+1, so a torn write leaves the other valid. Boot
control is device state, not authority: a forged record can only choose another signed
slot, which the bootloader still verifies. A CRC32 detects accidental and single-bit
damage; :func:`parse_partition` falls back to the other copy, and to the default
record when both are damaged.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace

from bastion.errors import FormatError

MAGIC = b"BSTNBCTL"
VERSION = 1
RECORD_SIZE = 512
COPY_OFFSET = 4096
PARTITION_MIN_SIZE = COPY_OFFSET + RECORD_SIZE
SLOTS = ("a", "b")
DEFAULT_TRIES = 3
MAX_TRIES = 15
_HEAD = struct.Struct("<8sIQB3x")  # 24 bytes
_SLOT = struct.Struct("<BBBB")


@dataclass(frozen=True, slots=True)
class SlotState:
    """One slot's boot state."""

    priority: int = 0
    tries_left: int = 0
    successful: bool = False
    unbootable: bool = True

    @property
    def bootable(self) -> bool:
        """The slot may be tried: not marked unbootable and successful or tries left."""
        return not self.unbootable and (self.successful or self.tries_left > 0)


@dataclass(frozen=True, slots=True)
class BootControl:
    """The A/B state: sequence, active slot and both slots' state."""

    sequence: int
    active: int
    slots: tuple[SlotState, SlotState]

    @classmethod
    def initial(cls) -> BootControl:
        """A fresh image: slot a active with DEFAULT_TRIES, slot b empty."""
        return cls(0, 0, (SlotState(15, DEFAULT_TRIES, False, False), SlotState()))

    def slot(self, name: str) -> SlotState:
        return self.slots[slot_index(name)]

    def with_slot(self, name: str, state: SlotState) -> BootControl:
        """A copy with one slot replaced."""
        i = slot_index(name)
        slots = (state, self.slots[1]) if i == 0 else (self.slots[0], state)
        return replace(self, slots=slots)

    def choose(self) -> str | None:
        """The slot to boot: the active one if bootable, else the other bootable one."""
        order = [self.active, 1 - self.active]
        for i in order:
            if self.slots[i].bootable:
                return SLOTS[i]
        return None

    def to_bytes(self) -> bytes:
        if self.active not in (0, 1):
            raise FormatError(f"active slot {self.active} is not 0 or 1")
        body = bytearray(_HEAD.pack(MAGIC, VERSION, self.sequence, self.active))
        for s in self.slots:
            if not 0 <= s.tries_left <= MAX_TRIES or not 0 <= s.priority <= 255:
                raise FormatError(f"slot state out of range: {s}")
            body += _SLOT.pack(s.priority, s.tries_left, int(s.successful), int(s.unbootable))
        body = body.ljust(RECORD_SIZE - 4, b"\0")
        return bytes(body) + struct.pack("<I", zlib.crc32(body))


def slot_index(name: str) -> int:
    """0 for "a", 1 for "b"."""
    if name not in SLOTS:
        raise FormatError(f"slot {name!r} is not one of {SLOTS}")
    return SLOTS.index(name)


def parse(record: bytes) -> BootControl:
    """Parse one 512-byte record, checking magic, version, CRC and ranges."""
    if len(record) < RECORD_SIZE:
        raise FormatError(f"boot-control record is {len(record)} bytes, expected {RECORD_SIZE}")
    record = bytes(record[:RECORD_SIZE])
    (crc,) = struct.unpack("<I", record[-4:])
    if zlib.crc32(record[:-4]) != crc:
        raise FormatError(
            f"boot-control CRC32 {crc:#010x} does not match {zlib.crc32(record[:-4]):#010x}"
        )
    magic, version, seq, active = _HEAD.unpack(record[: _HEAD.size])
    if magic != MAGIC:
        raise FormatError(f"boot-control magic is {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FormatError(f"boot-control version {version}, expected {VERSION}")
    if active not in (0, 1):
        raise FormatError(f"boot-control active slot {active} is not 0 or 1")
    slots = []
    for i in range(2):
        prio, tries, ok, bad = _SLOT.unpack_from(record, _HEAD.size + i * _SLOT.size)
        if tries > MAX_TRIES or ok > 1 or bad > 1:
            raise FormatError(f"boot-control slot {SLOTS[i]} state out of range")
        slots.append(SlotState(prio, tries, bool(ok), bool(bad)))
    if any(record[_HEAD.size + 2 * _SLOT.size : -4]):
        raise FormatError("boot-control reserved bytes are not zero")
    return BootControl(seq, active, (slots[0], slots[1]))


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What :func:`parse_partition` found: the winning record and per-copy errors."""

    control: BootControl
    copy: int | None  # 0 or 1, None when the default was used
    errors: tuple[str, ...]


def parse_partition(data: bytes) -> PartitionState:
    """Pick the valid copy with the higher sequence; default record if neither is valid."""
    found: list[tuple[int, BootControl]] = []
    errors: list[str] = []
    for i, off in enumerate((0, COPY_OFFSET)):
        try:
            found.append((i, parse(data[off : off + RECORD_SIZE])))
        except FormatError as exc:
            errors.append(f"copy {i}: {exc}")
    if not found:
        return PartitionState(BootControl.initial(), None, tuple(errors))
    copy, control = max(found, key=lambda item: (item[1].sequence, -item[0]))
    return PartitionState(control, copy, tuple(errors))


def next_write(state: PartitionState, control: BootControl) -> tuple[int, bytes]:
    """(offset, record) to write ``control`` durably: the losing copy, sequence + 1."""
    new = replace(control, sequence=state.control.sequence + 1)
    target = 1 if state.copy == 0 else 0
    return (target * COPY_OFFSET, new.to_bytes())


def initial_partition() -> bytes:
    """The partition bytes of a fresh image: both copies of the initial record."""
    record = BootControl.initial().to_bytes()
    return record + bytes(COPY_OFFSET - RECORD_SIZE) + record
