"""Foreign signatures: each probe finds its own magic, and nothing in LUKS or random bytes."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.formats.signatures import PROBE_SIZE, probe


def _blank() -> bytearray:
    return bytearray(PROBE_SIZE)


def _ext4() -> bytearray:
    b = _blank()
    b[1024 + 56 : 1024 + 58] = b"\x53\xef"
    struct.pack_into("<I", b, 1024 + 24, 2)  # 4 KiB blocks
    struct.pack_into("<I", b, 1024 + 76, 1)
    return b


def _xfs() -> bytearray:
    b = _blank()
    b[0:4] = b"XFSB"
    struct.pack_into(">I", b, 4, 4096)
    return b


def _vfat() -> bytearray:
    b = _blank()
    b[0:3] = b"\xeb\x3c\x90"
    b[3:11] = b"mkfs.fat"
    b[54:62] = b"FAT16   "
    b[510:512] = b"\x55\xaa"
    return b


def _lvm2() -> bytearray:
    b = _blank()
    b[512:520] = b"LABELONE"
    b[512 + 24 : 512 + 32] = b"LVM2 001"
    return b


def _swap() -> bytearray:
    b = _blank()
    b[4086:4096] = b"SWAPSPACE2"
    return b


def _gpt() -> bytearray:
    b = _blank()
    b[512:520] = b"EFI PART"
    return b


def _dos() -> bytearray:
    b = _blank()
    b[446 + 4] = 0x83  # one Linux partition
    b[510:512] = b"\x55\xaa"
    return b


def _btrfs() -> bytearray:
    b = _blank()
    b[65536 + 64 : 65536 + 72] = b"_BHRfS_M"
    return b


POSITIVE = [
    ("ext4", _ext4),
    ("xfs", _xfs),
    ("vfat", _vfat),
    ("LVM2_member", _lvm2),
    ("swap", _swap),
    ("gpt", _gpt),
    ("dos", _dos),
    ("btrfs", _btrfs),
]


@pytest.mark.parametrize(("name", "make"), POSITIVE, ids=[n for n, _ in POSITIVE])
def test_each_probe_finds_its_signature(name: str, make: object) -> None:
    assert callable(make)
    assert probe(bytes(make())) == (name,)


NEGATIVE = [
    ("blank", bytes(PROBE_SIZE)),
    ("empty", b""),
    ("short", b"XFSB"),
    ("ext4 magic, absurd block size", bytes(_ext4()[:1080]) + b"\x53\xef" + b"\xff" * 20),
    ("xfs magic, bad block size", b"XFSB" + struct.pack(">I", 1000) + bytes(600)),
    ("0x55aa without a partition or FAT", bytes(510) + b"\x55\xaa"),
    ("LABELONE without LVM2", bytes(512) + b"LABELONE" + bytes(600)),
]


@pytest.mark.parametrize(("head",), [(h,) for _, h in NEGATIVE], ids=[n for n, _ in NEGATIVE])
def test_no_false_positive(head: bytes) -> None:
    assert probe(head) == ()


def test_a_luks2_header_is_not_foreign() -> None:
    head = bytearray(PROBE_SIZE)
    head[0:8] = b"LUKS\xba\xbe\x00\x02"
    head[16384 : 16384 + 8] = b"SKUL\xba\xbe\x00\x02"
    head[32768:] = os.urandom(PROBE_SIZE - 32768)  # keyslot material
    assert probe(bytes(head)) == ()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=PROBE_SIZE + 16))
def test_arbitrary_bytes_give_a_tuple(data: bytes) -> None:
    found = probe(data)
    assert isinstance(found, tuple)
    assert all(isinstance(name, str) for name in found)
