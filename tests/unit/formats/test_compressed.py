"""Bounded, complete decompression of gzip, xz and zstd streams (formats/compressed.py):
the negative table first, then what is read."""

from __future__ import annotations

import gzip
import lzma

import pytest
import zstandard

from bastion.errors import FormatError, LimitError
from bastion.formats import compressed

DATA = b"070701 a cpio archive, say " * 4000
GZ = gzip.compress(DATA, mtime=0)
XZ = lzma.compress(DATA, check=lzma.CHECK_CRC32)
ZST = zstandard.ZstdCompressor().compress(DATA)
STREAMS = {"gzip": GZ, "xz": XZ, "zstd": ZST}


# --- refused --------------------------------------------------------------------------------

REFUSED: list[tuple[str, bytes, type[Exception], str]] = [
    *[(f"{k} truncated", v[: len(v) // 2], FormatError, "truncated") for k, v in STREAMS.items()],
    *[(f"{k} cut by one byte", v[:-1], FormatError, "truncated") for k, v in STREAMS.items()],
    *[(f"{k} then junk", v + b"junk", FormatError, "after the") for k, v in STREAMS.items()],
    *[(f"{k} twice", v + v, FormatError, "after the") for k, v in (("gzip", GZ), ("xz", XZ))],
    ("zstd then a second compressor's stream", ZST + GZ, FormatError, "after the"),
    ("gzip corrupt body", GZ[:20] + bytes(len(GZ) - 20), FormatError, "gzip"),
    ("xz corrupt body", XZ[:20] + bytes(len(XZ) - 20), FormatError, "xz"),
    ("zstd corrupt body", ZST[:8] + b"\xff" * (len(ZST) - 8), FormatError, "zstd"),
    ("bzip2", b"BZh91AY&SY" + bytes(20), FormatError, "bzip2"),
    ("lzo", b"\x89LZO\0\r\n" + bytes(20), FormatError, "lzo"),
    ("lz4", b"\x02\x21\x4c\x18" + bytes(20), FormatError, "lz4"),
]


@pytest.mark.parametrize(
    ("data", "error", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused(data: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        compressed.decompress(data, limit=1 << 24, what="initrd")


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_bombs_stop_at_the_limit(kind: str) -> None:
    bomb = {
        "gzip": gzip.compress(bytes(64 << 20), mtime=0),
        "xz": lzma.compress(bytes(64 << 20)),
        "zstd": zstandard.ZstdCompressor().compress(bytes(64 << 20)),
    }[kind]
    assert len(bomb) < 100_000
    with pytest.raises(LimitError, match="more than 1048576 bytes"):
        compressed.decompress(bomb, limit=1 << 20, what="initrd")


def test_exactly_at_the_limit_is_read() -> None:
    for stream in STREAMS.values():
        assert compressed.decompress(stream, limit=len(DATA), what="x") == DATA
        with pytest.raises(LimitError):
            compressed.decompress(stream, limit=len(DATA) - 1, what="x")


def test_a_suffix_that_disagrees_with_the_content() -> None:
    with pytest.raises(FormatError, match=r"m\.ko\.xz is not an xz stream"):
        compressed.decompress_as("xz", GZ, limit=1 << 24, what="m.ko.xz")


def test_plain_data_is_not_a_stream() -> None:
    assert compressed.kind_of(DATA) is None
    with pytest.raises(FormatError, match="not compressed"):
        compressed.decompress(DATA, limit=1 << 24, what="x")


# --- read ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_each_kind_is_recognised_and_read(kind: str) -> None:
    stream = STREAMS[kind]
    assert compressed.kind_of(stream) == kind
    assert compressed.decompress(stream, limit=1 << 24, what="x") == DATA
    assert compressed.decompress_as(kind, stream, limit=1 << 24, what="x") == DATA


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_zero_padding_after_the_stream_is_allowed(kind: str) -> None:
    # the initramfs unpacker skips zero padding between segments (4-byte aligned)
    assert compressed.decompress(STREAMS[kind] + bytes(12), limit=1 << 24, what="x") == DATA


def test_several_zstd_frames_are_one_stream() -> None:
    # zstd's format: a file is a sequence of frames (``zstd`` writes several for large or
    # concatenated input), read as one stream by the kernel and by ``zstd -d``
    cctx = zstandard.ZstdCompressor()
    two = cctx.compress(DATA[:1000]) + cctx.compress(DATA[1000:])
    assert compressed.decompress(two, limit=1 << 24, what="x") == DATA
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"meta"
    assert compressed.decompress(skippable + ZST, limit=1 << 24, what="x") == DATA


def test_xz_with_any_integrity_check() -> None:
    # what liblzma (kmod, userspace) reads
    for check in (lzma.CHECK_NONE, lzma.CHECK_CRC32, lzma.CHECK_CRC64, lzma.CHECK_SHA256):
        stream = lzma.compress(DATA, check=check)
        assert compressed.decompress(stream, limit=1 << 24, what="x") == DATA


@pytest.mark.parametrize(
    ("check", "read"),
    [
        (lzma.CHECK_NONE, True),
        (lzma.CHECK_CRC32, True),
        (lzma.CHECK_CRC64, False),
        (lzma.CHECK_SHA256, False),
    ],
)
def test_the_kernels_xz_decoder_checks_only_crc32(check: int, read: bool) -> None:
    # the initramfs unpacker's XZ Embedded: CRC32 or no check (``xz --check=crc32``)
    stream = lzma.compress(DATA, check=check)
    checks = compressed.KERNEL_XZ_CHECKS
    if read:
        assert compressed.decompress(stream, limit=1 << 24, what="x", xz_checks=checks) == DATA
    else:
        with pytest.raises(FormatError, match="--check=crc32"):
            compressed.decompress(stream, limit=1 << 24, what="initrd", xz_checks=checks)
