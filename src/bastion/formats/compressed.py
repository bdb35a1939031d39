"""Bounded, complete decompression of the streams a Linux kernel and kmod read: gzip, xz
and zstd (ADR 0039, amendment 2026-12-07).

The sim kernel unpacks initrds and loads modules with these; so could anything else that
must read a compressed kernel artefact. Every stream is read

* **bounded**: more than ``limit`` bytes of output is a :class:`~bastion.errors.LimitError`,
  found while decompressing (gzip and xz never give more than asked; zstd is fed in
  1 KiB slices, so one slice of a bomb cannot expand far past the limit);
* **completely**: a stream that ends early is a :class:`~bastion.errors.FormatError`,
  never a short result (``zstandard``'s stream reader returns a truncated frame's prefix
  without complaint, so its decompression object and ``eof`` are used instead);
* **alone**: after the stream only zero padding may follow (the initramfs unpacker skips
  it between segments). Anything else is refused: a kernel would go on to unpack a
  second segment, which a reader that stopped at the first would silently miss.

gzip is read with :mod:`zlib`, xz with :mod:`lzma` (any integrity check, as liblzma reads
it; pass ``xz_checks=KERNEL_XZ_CHECKS`` for what the kernel's own XZ Embedded decoder
reads: CRC32 or none, ``xz --check=crc32``), zstd with ``zstandard`` (every frame of the
stream, skippable frames skipped, as ``zstd -d`` and the kernel read it). bzip2, LZO and
LZ4 are recognised and refused by name.
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Callable, Collection
from typing import Any

import zstandard

from bastion.errors import FormatError, LimitError

#: input bytes fed per step. gzip and xz bound their output themselves (``max_length``);
#: zstd's decompression object does not, so its slices are small enough that one slice
#: of a bomb stays near the limit (its densest block turns 4 bytes into 128 KiB: a slice
#: expands to at most 32 MiB past the limit)
_SLICE = 64 * 1024
_ZSTD_SLICE = 1024
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x89LZO", "lzo"),
    (b"\x02\x21\x4c\x18", "lz4"),
)
_ZSTD_FRAME = b"\x28\xb5\x2f\xfd"
#: the integrity checks the kernel's XZ Embedded decoder verifies (initramfs, kernel)
KERNEL_XZ_CHECKS: frozenset[int] = frozenset({lzma.CHECK_NONE, lzma.CHECK_CRC32})


def kind_of(data: bytes) -> str | None:
    """The compression ``data`` starts with (``gzip``, ``xz``, ``zstd``, ``bzip2``,
    ``lzo``, ``lz4``), or None. A zstd skippable frame counts as zstd."""
    for magic, kind in _MAGICS:
        if data.startswith(magic):
            return kind
    if len(data) >= 8 and data[1:4] == b"\x2a\x4d\x18" and data[0] & 0xF0 == 0x50:
        return "zstd"  # a skippable frame (magic 0x184D2A5?)
    return None


def decompress(
    data: bytes, *, limit: int, what: str, xz_checks: Collection[int] | None = None
) -> bytes:
    """The whole decompressed stream ``data`` holds, of the kind its magic names
    (module docstring); FormatError when it is none of gzip, xz or zstd."""
    kind = kind_of(data)
    if kind is None:
        raise FormatError(f"{what} is not compressed (it starts {data[:8].hex() or 'empty'})")
    return decompress_as(kind, data, limit=limit, what=what, xz_checks=xz_checks)


def decompress_as(
    kind: str,
    data: bytes,
    *,
    limit: int,
    what: str,
    xz_checks: Collection[int] | None = None,
) -> bytes:
    """Like :func:`decompress`, for a stream that must be ``kind`` (a file's suffix
    says so: ``.ko.xz``); FormatError when its content is not."""
    found = kind_of(data)
    if found != kind:
        article = "an" if kind[0] in "aeiouxl" else "a"
        raise FormatError(f"{what} is not {article} {kind} stream ({found or 'no known magic'})")
    if kind == "gzip":
        return _gzip(data, limit, what)
    if kind == "xz":
        return _xz(data, limit, what, xz_checks)
    if kind == "zstd":
        return _zstd(data, limit, what)
    raise FormatError(f"{what} is {kind}-compressed: bastion reads gzip, xz and zstd only")


def _check_rest(rest: bytes, kind: str, what: str) -> None:
    if rest.strip(b"\x00"):
        raise FormatError(
            f"{what}: {len(rest)} bytes after the {kind} stream that are not zero padding "
            "(a second segment is not read)"
        )


def _bounded(
    data: bytes,
    limit: int,
    what: str,
    step: Callable[[bytes, int], bytes],
    finished: Callable[[], bool],
) -> tuple[bytearray, int]:
    """Feed ``data`` to ``step`` in slices until ``finished``; (output, bytes fed).

    ``step(chunk, room)`` gives at most ``room`` bytes (one more than the limit allows):
    a decoder holds input back only when it gave all of ``room``, which is over the limit
    and raises, so no held-back input is left to drain afterwards."""
    out = bytearray()
    pos = 0
    while pos < len(data) and not finished():
        chunk = data[pos : pos + _SLICE]
        pos += len(chunk)
        out += step(chunk, limit + 1 - len(out))
        if len(out) > limit:
            raise LimitError(f"{what} decompresses to more than {limit} bytes")
    return out, pos


def _whole(
    data: bytes,
    limit: int,
    what: str,
    *,
    kind: str,
    step: Callable[[bytes, int], bytes],
    decoder: Any,
    errors: type[Exception],
) -> bytes:
    """One gzip or xz stream through ``step``: bounded, complete, alone (module docstring).
    ``decoder`` is zlib's or lzma's object (``eof``, ``unused_data``)."""
    try:
        out, fed = _bounded(data, limit, what, step, lambda: bool(decoder.eof))
    except errors as exc:
        raise FormatError(f"{what}: {kind} stream is corrupt: {exc}") from exc
    if not decoder.eof:
        raise FormatError(f"{what}: {kind} stream is truncated")
    _check_rest(decoder.unused_data + data[fed:], kind, what)
    return bytes(out)


def _gzip(data: bytes, limit: int, what: str) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def step(chunk: bytes, room: int) -> bytes:
        return inflater.decompress(inflater.unconsumed_tail + chunk, room)

    return _whole(data, limit, what, kind="gzip", step=step, decoder=inflater, errors=zlib.error)


def _xz(data: bytes, limit: int, what: str, checks: Collection[int] | None) -> bytes:
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def step(chunk: bytes, room: int) -> bytes:
        piece = decoder.decompress(chunk, room)
        known = decoder.check != lzma.CHECK_UNKNOWN
        if checks is not None and known and decoder.check not in checks:
            raise FormatError(
                f"{what}: xz integrity check {decoder.check} is not one the kernel's "
                "decoder verifies (compress with xz --check=crc32)"
            )
        return piece

    return _whole(data, limit, what, kind="xz", step=step, decoder=decoder, errors=lzma.LZMAError)


def _zstd(data: bytes, limit: int, what: str) -> bytes:
    out = bytearray()
    rest = data
    while kind_of(rest) == "zstd":  # a zstd stream is a sequence of frames
        decoder = zstandard.ZstdDecompressor().decompressobj()
        pos = 0
        try:
            while pos < len(rest) and not decoder.eof:
                chunk = rest[pos : pos + _ZSTD_SLICE]
                pos += len(chunk)
                out += decoder.decompress(chunk)
                if len(out) > limit:
                    raise LimitError(f"{what} decompresses to more than {limit} bytes")
        except zstandard.ZstdError as exc:
            raise FormatError(f"{what}: zstd stream is corrupt: {exc}") from exc
        if not decoder.eof:
            raise FormatError(f"{what}: zstd stream is truncated")
        rest = decoder.unused_data + rest[pos:]
    _check_rest(rest, "zstd", what)
    return bytes(out)
