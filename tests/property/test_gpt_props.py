"""Hypothesis: GPT round trip, and arbitrary bytes give a GptDisk or FormatError."""

from __future__ import annotations

import contextlib
import uuid

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats import gpt

SECTORS = 4096


@st.composite
def disks(draw: st.DrawFn) -> gpt.GptDisk:
    count = draw(st.integers(0, 6))
    parts = []
    lba = 34
    for i in range(count):
        start = lba + draw(st.integers(0, 50))
        end = start + draw(st.integers(0, 300))
        if end > SECTORS - 34:
            break
        parts.append(
            gpt.Partition(
                uuid.UUID(int=draw(st.integers(1, 2**128 - 1))),
                uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
                start,
                end,
                draw(st.integers(0, 2**64 - 1)),
                draw(st.text(alphabet="abcdefgh-0123", max_size=36)) or f"p{i}",
            )
        )
        lba = end + 1
    return gpt.GptDisk(SECTORS, uuid.UUID(int=draw(st.integers(0, 2**128 - 1))), tuple(parts))


@given(disks())
def test_round_trip(disk: gpt.GptDisk) -> None:
    assert gpt.parse(disk.head_bytes(), SECTORS, disk.tail_bytes()) == disk


@given(st.binary(max_size=34 * 512), st.binary(max_size=33 * 512))
def test_arbitrary_bytes(head: bytes, tail: bytes) -> None:
    try:
        result = gpt.parse(head, SECTORS, tail)
    except FormatError:
        return
    assert isinstance(result, gpt.GptDisk)


@given(disks(), st.integers(0, 34 * 512 * 8 - 1))
def test_flipped_bit_in_head_never_crashes(disk: gpt.GptDisk, bit: int) -> None:
    head = bytearray(disk.head_bytes())
    head[bit // 8] ^= 1 << (bit % 8)
    with contextlib.suppress(FormatError):
        gpt.parse(bytes(head), SECTORS, disk.tail_bytes())
