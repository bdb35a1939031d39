"""Hypothesis: formats/compressed.py gives back exactly what was compressed, for any
bytes and each kind; any other input (cut, flipped, random) gives the bytes, a
FormatError or a LimitError, never anything else, and never more than the limit."""

from __future__ import annotations

import gzip
import lzma

import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import FormatError, LimitError
from bastion.formats import compressed

PACK = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "xz": lambda d: lzma.compress(d, check=lzma.CHECK_CRC32),
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}
kinds = st.sampled_from(sorted(PACK))


@given(kinds, st.binary(max_size=5000))
def test_round_trip(kind: str, data: bytes) -> None:
    stream = PACK[kind](data)
    out = compressed.decompress(
        stream, limit=len(data), what="x", xz_checks=compressed.KERNEL_XZ_CHECKS
    )
    assert out == data


@settings(max_examples=300)
@given(
    kinds, st.binary(max_size=2000), st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 3)
)
def test_damaged_streams(kind: str, data: bytes, where: int, xor: int, how: int) -> None:
    stream = bytearray(PACK[kind](data))
    at = where % len(stream)
    if how == 0:
        stream[at] ^= xor or 1
    elif how == 1:
        del stream[at:]
    elif how == 2:
        stream += bytes([xor])
    limit = max(1, len(data) // 2) if how == 3 else len(data)
    try:
        out = compressed.decompress(bytes(stream), limit=limit, what="x")
    except (FormatError, LimitError):
        return
    assert len(out) <= limit


@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    try:
        out = compressed.decompress(data, limit=1 << 16, what="x")
    except (FormatError, LimitError):
        return
    assert len(out) <= 1 << 16
