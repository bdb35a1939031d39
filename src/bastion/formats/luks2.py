"""LUKS2 header codec: binary header, checksum, JSON metadata, choosing between copies.

Pure: bytes in, frozen objects out, ``to_bytes()`` back. Byte-compatible with
cryptsetup 2.6 (LUKS2 on-disk format spec v1.1.4 where the two agree, cryptsetup where
they do not):

* binary header of 4096 bytes, big-endian integers, primary magic ``LUKS\\xba\\xbe`` at 0
  and secondary magic ``SKUL\\xba\\xbe`` at ``hdr_size``;
* checksum = ``checksum_alg``(binary header with the csum field zeroed || whole JSON area);
* JSON area of ``hdr_size - 4096`` bytes (parsed by :mod:`bastion.formats.luks2_json`,
  whose names are re-exported here);
* which copy wins when they disagree (valid checksum, then higher seqid), and the three
  writes of cryptsetup's update order.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass, replace

from bastion import limits
from bastion.errors import FormatError, LimitError
from bastion.formats.luks2_json import (
    BINARY_HEADER_SIZE,
    DEFAULT_CIPHER,
    DIGEST_SIZES,
    KDF_SALT_SIZE,
    SUPPORTED_CIPHERS,
    AnyKdf,
    Argon2Params,
    Config,
    Digest,
    KdfParams,
    KdfType,
    Keyslot,
    Metadata,
    Pbkdf2Params,
    Segment,
    Token,
    UnknownKdf,
    metadata_from_json,
    parse_json_area,
    parse_kdf,
    validate,
)

__all__ = [
    "BINARY_HEADER_SIZE",
    "CSUM_OFFSET",
    "CSUM_SIZE",
    "DEFAULT_CIPHER",
    "DIGEST_SIZES",
    "KDF_SALT_SIZE",
    "MAGIC_PRIMARY",
    "MAGIC_SECONDARY",
    "SALT_SIZE",
    "SUPPORTED_CIPHERS",
    "VERSION",
    "AnyKdf",
    "Argon2Params",
    "BinaryHeader",
    "Config",
    "Digest",
    "HeaderArea",
    "HeaderChoice",
    "HeaderCopy",
    "KdfParams",
    "KdfType",
    "Keyslot",
    "Metadata",
    "Pbkdf2Params",
    "Segment",
    "Token",
    "UnknownKdf",
    "build_copy",
    "primary_version",
    "choose_copy",
    "header_checksum",
    "metadata_from_json",
    "parse_json_area",
    "parse_kdf",
    "raw_checksum",
    "validate",
]

MAGIC_PRIMARY = b"LUKS\xba\xbe"
MAGIC_SECONDARY = b"SKUL\xba\xbe"
VERSION = 2
CSUM_OFFSET = 448
CSUM_SIZE = 64
SALT_SIZE = 64

# magic, version, hdr_size, seqid, label, checksum_alg, salt, uuid, subsystem, hdr_offset
_BIN = struct.Struct(">6sHQQ48s32s64s40s48sQ")


class HeaderCopy(enum.StrEnum):
    """Which of the two header copies."""

    PRIMARY = "primary"
    SECONDARY = "secondary"


# --- binary header ------------------------------------------------------------------------


def _cstr(raw: bytes, what: str) -> str:
    """A NUL-terminated field; label and subsystem are UTF-8 as cryptsetup stores them
    (undecodable bytes survive a round trip as surrogate escapes)."""
    text = raw.split(b"\0", 1)[0]
    return text.decode("utf-8", "surrogateescape")


def _pad(text: str, size: int, what: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) >= size:
        raise FormatError(f"LUKS2 {what} {text!r} is longer than {size - 1} bytes")
    return raw.ljust(size, b"\0")


@dataclass(frozen=True, slots=True)
class BinaryHeader:
    """The 4096-byte binary part of one header copy."""

    copy: HeaderCopy
    hdr_size: int
    seqid: int
    label: str
    checksum_alg: str
    salt: bytes
    uuid: str
    subsystem: str
    hdr_offset: int
    csum: bytes = b"\0" * CSUM_SIZE

    @classmethod
    def parse(cls, data: bytes) -> BinaryHeader:
        """Parse the first 4096 bytes of a header copy (structure only, no checksum)."""
        if len(data) < BINARY_HEADER_SIZE:
            raise FormatError(
                f"LUKS2 binary header: expected {BINARY_HEADER_SIZE} bytes, got {len(data)}"
            )
        magic, version, hdr_size, seqid, label, alg, salt, uuid, subsystem, hdr_offset = (
            _BIN.unpack_from(data, 0)
        )
        if magic == MAGIC_PRIMARY:
            copy = HeaderCopy.PRIMARY
        elif magic == MAGIC_SECONDARY:
            copy = HeaderCopy.SECONDARY
        else:
            raise FormatError(f"LUKS2 binary header: bad magic {magic.hex()}")
        if version != VERSION:
            raise FormatError(f"LUKS2 binary header: expected version 2, got {version}")
        if hdr_size not in limits.LUKS2_HDR_SIZES:
            raise LimitError(f"LUKS2 binary header: hdr_size {hdr_size} is not an allowed size")
        expected_offset = 0 if copy is HeaderCopy.PRIMARY else hdr_size
        if hdr_offset != expected_offset:
            raise FormatError(
                f"LUKS2 {copy} header: hdr_offset is {hdr_offset}, expected {expected_offset}"
            )
        checksum_alg = _cstr(alg, "checksum_alg")
        if checksum_alg not in DIGEST_SIZES:
            raise FormatError(f"LUKS2 header: unsupported checksum algorithm {checksum_alg!r}")
        return cls(
            copy=copy,
            hdr_size=hdr_size,
            seqid=seqid,
            label=_cstr(label, "label"),
            checksum_alg=checksum_alg,
            salt=bytes(salt),
            uuid=_cstr(uuid, "uuid"),
            subsystem=_cstr(subsystem, "subsystem"),
            hdr_offset=hdr_offset,
            csum=bytes(data[CSUM_OFFSET : CSUM_OFFSET + CSUM_SIZE]),
        )

    def to_bytes(self, *, with_csum: bool = True) -> bytes:
        """The 4096 bytes; ``with_csum=False`` zeroes the csum field (first write, checksum)."""
        magic = MAGIC_PRIMARY if self.copy is HeaderCopy.PRIMARY else MAGIC_SECONDARY
        if len(self.salt) != SALT_SIZE:
            raise FormatError(f"LUKS2 header salt must be {SALT_SIZE} bytes")
        head = _BIN.pack(
            magic,
            VERSION,
            self.hdr_size,
            self.seqid,
            _pad(self.label, 48, "label"),
            _pad(self.checksum_alg, 32, "checksum_alg"),
            self.salt,
            _pad(self.uuid, 40, "uuid"),
            _pad(self.subsystem, 48, "subsystem"),
            self.hdr_offset,
        )
        out = bytearray(BINARY_HEADER_SIZE)
        out[: len(head)] = head
        if with_csum:
            out[CSUM_OFFSET : CSUM_OFFSET + CSUM_SIZE] = self.csum.ljust(CSUM_SIZE, b"\0")
        return bytes(out)


def primary_version(data: bytes) -> int | None:
    """The version field when ``data`` starts with the primary LUKS magic, else None.

    cryptsetup reads this first: version 1 is LUKS1, anything but 2 is refused, and only a
    missing primary magic lets it look for a secondary LUKS2 header.
    """
    if len(data) < 8 or data[:6] != MAGIC_PRIMARY:
        return None
    return int.from_bytes(data[6:8], "big")


def header_checksum(binary: BinaryHeader, json_area: bytes) -> bytes:
    """checksum_alg(binary header with zeroed csum || JSON area), zero-padded to 64 bytes."""
    return raw_checksum(binary.checksum_alg, binary.to_bytes(with_csum=False), json_area)


def raw_checksum(alg: str, raw_binary: bytes, json_area: bytes) -> bytes:
    """The checksum over the bytes as stored (csum field zeroed), zero-padded to 64 bytes."""
    h = hashlib.new(alg)
    h.update(raw_binary[:CSUM_OFFSET])
    h.update(b"\0" * CSUM_SIZE)
    h.update(raw_binary[CSUM_OFFSET + CSUM_SIZE : BINARY_HEADER_SIZE])
    h.update(json_area)
    return h.digest().ljust(CSUM_SIZE, b"\0")


# --- one header copy ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderArea:
    """One verified header copy: its binary header and metadata."""

    binary: BinaryHeader
    metadata: Metadata
    json_area: bytes

    @classmethod
    def parse(cls, data: bytes, *, expect: HeaderCopy | None = None) -> HeaderArea:
        """Parse a whole copy (``hdr_size`` bytes), verifying its checksum; FormatError if bad."""
        binary = BinaryHeader.parse(data)
        if expect is not None and binary.copy is not expect:
            raise FormatError(f"LUKS2: expected the {expect} header, found the {binary.copy}")
        if len(data) < binary.hdr_size:
            raise FormatError(
                f"LUKS2 {binary.copy} header truncated: {len(data)} of {binary.hdr_size} bytes"
            )
        json_area = bytes(data[BINARY_HEADER_SIZE : binary.hdr_size])
        want = raw_checksum(binary.checksum_alg, bytes(data[:BINARY_HEADER_SIZE]), json_area)
        if not hmac.compare_digest(want, binary.csum):
            raise FormatError(f"LUKS2 {binary.copy} header checksum mismatch")
        return cls(binary, parse_json_area(json_area), json_area)


def build_copy(binary: BinaryHeader, metadata: Metadata) -> tuple[bytes, bytes, bytes]:
    """Serialize one copy for cryptsetup's write order.

    Returns (binary header with zeroed csum, JSON area, binary header with csum).
    """
    text = metadata.to_bytes()
    json_size = binary.hdr_size - BINARY_HEADER_SIZE
    if metadata.config.json_size != json_size:
        raise FormatError("LUKS2: config.json_size disagrees with hdr_size")
    if len(text) >= json_size:
        raise LimitError(f"LUKS2 JSON is {len(text)} bytes; the JSON area holds {json_size - 1}")
    area = text + b"\0" * (json_size - len(text))
    sealed = replace(binary, csum=header_checksum(binary, area))
    return binary.to_bytes(with_csum=False), area, sealed.to_bytes()


@dataclass(frozen=True, slots=True)
class HeaderChoice:
    """Which copy to trust, and which copy (if any) needs rewriting from it."""

    winner: HeaderArea
    stale: HeaderCopy | None
    reason: str


def choose_copy(
    primary: HeaderArea | FormatError, secondary: HeaderArea | FormatError
) -> HeaderChoice:
    """Pick the copy to trust as cryptsetup does: valid checksum first, then higher seqid."""
    if isinstance(primary, FormatError) and isinstance(secondary, FormatError):
        raise FormatError(
            f"LUKS2: both header copies are damaged (primary: {primary}; secondary: {secondary})"
        )
    if isinstance(primary, FormatError):
        assert isinstance(secondary, HeaderArea)
        return HeaderChoice(secondary, HeaderCopy.PRIMARY, f"primary damaged: {primary}")
    if isinstance(secondary, FormatError):
        return HeaderChoice(primary, HeaderCopy.SECONDARY, f"secondary damaged: {secondary}")
    if primary.binary.hdr_size != secondary.binary.hdr_size:
        return HeaderChoice(primary, HeaderCopy.SECONDARY, "header sizes differ")
    if secondary.binary.seqid > primary.binary.seqid:
        return HeaderChoice(secondary, HeaderCopy.PRIMARY, "secondary is newer")
    if primary.binary.seqid > secondary.binary.seqid:
        return HeaderChoice(primary, HeaderCopy.SECONDARY, "primary is newer")
    if primary.json_area != secondary.json_area or primary.binary.uuid != secondary.binary.uuid:
        return HeaderChoice(primary, HeaderCopy.SECONDARY, "copies differ at the same seqid")
    return HeaderChoice(primary, None, "both copies agree")
