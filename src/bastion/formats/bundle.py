"""The trailing layout of a RAUC bundle (``.raucb``), as RAUC 1.8 reads it.

A bundle is, front to back::

    payload (squashfs, padded to 4096 bytes)
    dm-verity hash tree (verity format only; ``verity-size`` bytes, no superblock)
    CMS signature (DER)
    signature size (8 bytes, big-endian)

RAUC (``src/bundle.c``) reads the last 8 bytes, refuses a zero size, a size above the
bundle or above 64 KiB, and an unaligned signature start (``offset % 4096``); for verity
bundles the signed manifest then says how much of what precedes the signature is the
hash tree (:func:`split_verity`). Pure: sizes and bytes in, offsets out.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.errors import FormatError, LimitError
from bastion.limits import BUNDLE_BLOCK_SIZE, BUNDLE_SIGNATURE_MAX_SIZE

TRAILER_SIZE = 8


@dataclass(frozen=True, slots=True)
class BundleTrailer:
    """Where the signature sits: ``signed_size`` bytes precede it (payload + tree)."""

    bundle_size: int
    signature_offset: int
    signature_size: int

    @property
    def signed_size(self) -> int:
        """Bytes before the signature (RAUC's ``bundle->size``)."""
        return self.signature_offset


@dataclass(frozen=True, slots=True)
class VerityLayout:
    """Payload and hash-tree regions of a verity bundle."""

    payload_size: int
    tree_offset: int
    tree_size: int

    @property
    def data_blocks(self) -> int:
        """4096-byte blocks of payload covered by the tree."""
        return self.payload_size // BUNDLE_BLOCK_SIZE


def parse_trailer(bundle_size: int, trailer: bytes) -> BundleTrailer:
    """Check the last 8 bytes of a bundle of ``bundle_size`` bytes; raise FormatError."""
    if len(trailer) != TRAILER_SIZE:
        raise FormatError(f"bundle trailer is {len(trailer)} bytes (expected {TRAILER_SIZE})")
    if bundle_size < TRAILER_SIZE:
        raise FormatError(f"bundle is {bundle_size} bytes, too short for a signature size")
    size = int.from_bytes(trailer, "big")
    limit = bundle_size - TRAILER_SIZE
    if size == 0:
        raise FormatError("bundle signature size is 0")
    if size > limit:
        raise FormatError(f"bundle signature size ({size}) exceeds the bundle size")
    if size > BUNDLE_SIGNATURE_MAX_SIZE:
        raise LimitError(
            f"bundle signature size ({size}) exceeds {BUNDLE_SIGNATURE_MAX_SIZE} bytes"
        )
    offset = limit - size
    if offset % BUNDLE_BLOCK_SIZE:
        raise FormatError(
            f"bundle signature starts at {offset}, not a multiple of {BUNDLE_BLOCK_SIZE}"
        )
    return BundleTrailer(bundle_size, offset, size)


def split_verity(signed_size: int, verity_size: int) -> VerityLayout:
    """Split the ``signed_size`` bytes before the signature by the manifest's verity-size."""
    if verity_size <= 0 or verity_size % BUNDLE_BLOCK_SIZE:
        raise FormatError(f"bundle verity-size {verity_size} is not a positive multiple of 4096")
    payload = signed_size - verity_size
    if payload <= BUNDLE_BLOCK_SIZE:
        raise FormatError(
            f"bundle verity-size {verity_size} leaves {payload} payload bytes "
            f"(expected more than {BUNDLE_BLOCK_SIZE})"
        )
    if payload % BUNDLE_BLOCK_SIZE:
        raise FormatError(f"bundle payload is {payload} bytes, not a multiple of 4096")
    return VerityLayout(payload, payload, verity_size)


def trailer_bytes(signature_size: int) -> bytes:
    """The 8-byte big-endian size RAUC appends after the signature."""
    if not 0 < signature_size <= BUNDLE_SIGNATURE_MAX_SIZE:
        raise LimitError(f"bundle signature of {signature_size} bytes is out of range")
    return signature_size.to_bytes(TRAILER_SIZE, "big")
