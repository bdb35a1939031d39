"""UEFI Secure Boot variables: signature lists, EFI_TIME and authenticated writes.

Byte layouts (UEFI 2.10, sections 8.2 and 32.4; all integers little-endian, GUIDs in
the mixed-endian ``EFI_GUID`` order, i.e. :attr:`uuid.UUID.bytes_le`):

* ``EFI_SIGNATURE_LIST`` (28-byte header): SignatureType GUID, u32 SignatureListSize,
  u32 SignatureHeaderSize, u32 SignatureSize, then the header bytes, then
  ``(ListSize - 28 - HeaderSize) / SignatureSize`` entries of ``EFI_SIGNATURE_DATA``:
  SignatureOwner GUID + data. A variable (PK, KEK, db, dbx) is a concatenation of lists.
  For :data:`EFI_CERT_X509_GUID` the data is one DER certificate (so each list has one
  size of entry; ``cert-to-efi-sig-list`` writes one list per certificate); for
  :data:`EFI_CERT_SHA256_GUID` it is a 32-byte digest. Both have a header size of 0.
* ``EFI_TIME`` (16 bytes): u16 Year, u8 Month, Day, Hour, Minute, Second, Pad1,
  u32 Nanosecond, i16 TimeZone, u8 Daylight, Pad2.
* ``EFI_VARIABLE_AUTHENTICATION_2``: EFI_TIME TimeStamp, then ``WIN_CERTIFICATE_UEFI_GUID``
  {u32 dwLength (24 + CertData), u16 wRevision 0x0200, u16 wCertificateType 0x0EF1,
  GUID CertType = :data:`EFI_CERT_TYPE_PKCS7_GUID`, CertData = a DER PKCS#7 SignedData},
  then the new variable data. This is the content of a ``.auth`` file.
* What a time-based authenticated write signs (:func:`signable_bytes`): the variable
  name in UTF-16LE without its NUL, the vendor GUID, u32 Attributes, the EFI_TIME and
  the data.

Pure: bytes in, frozen objects out; every count and size bounded by ``limits``.
"""

from __future__ import annotations

import datetime as dt
import enum
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from bastion.errors import FormatError, LimitError
from bastion.limits import (
    EFI_AUTH_CERT_MAX_SIZE,
    EFI_SIGLIST_MAX_ENTRIES,
    EFI_SIGLIST_MAX_LISTS,
    EFI_SIGNATURE_MAX_SIZE,
    EFI_VARIABLE_MAX_SIZE,
    EFI_VARIABLE_NAME_MAX_CHARS,
)

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
EFI_CERT_TYPE_PKCS7_GUID = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")

WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_EFI_GUID = 0x0EF1

SIGLIST_HEADER_SIZE = 28
SIGNATURE_OWNER_SIZE = 16
EFI_TIME_SIZE = 16
WIN_CERTIFICATE_UEFI_GUID_SIZE = 24  # dwLength, wRevision, wCertificateType, CertType
SHA256_SIZE = 32

#: the vendor GUID each Secure Boot variable lives under
SECURE_BOOT_VARIABLES: dict[str, uuid.UUID] = {
    "PK": EFI_GLOBAL_VARIABLE,
    "KEK": EFI_GLOBAL_VARIABLE,
    "db": EFI_IMAGE_SECURITY_DATABASE,
    "dbx": EFI_IMAGE_SECURITY_DATABASE,
}


class Attribute(enum.IntFlag):
    """EFI variable attributes (the ones Secure Boot variables use)."""

    NON_VOLATILE = 0x01
    BOOTSERVICE_ACCESS = 0x02
    RUNTIME_ACCESS = 0x04
    TIME_BASED_AUTHENTICATED_WRITE_ACCESS = 0x20
    APPEND_WRITE = 0x40


#: NV | BS | RT | time-based authenticated write: 0x27
AUTHENTICATED_ATTRIBUTES = (
    Attribute.NON_VOLATILE
    | Attribute.BOOTSERVICE_ACCESS
    | Attribute.RUNTIME_ACCESS
    | Attribute.TIME_BASED_AUTHENTICATED_WRITE_ACCESS
)


def guid_bytes(value: uuid.UUID) -> bytes:
    """The 16-byte EFI_GUID encoding (mixed-endian)."""
    return value.bytes_le


def parse_guid(data: bytes, offset: int = 0) -> uuid.UUID:
    """Read an EFI_GUID at ``offset``."""
    if offset + 16 > len(data):
        raise FormatError(f"EFI_GUID at offset {offset}: truncated ({len(data) - offset} bytes)")
    return uuid.UUID(bytes_le=bytes(data[offset : offset + 16]))


# --- EFI_TIME ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class EfiTime:
    """An EFI_TIME. Ordering compares the calendar fields (what firmware compares).

    Month 0 is accepted: ``sbvarsign`` (sbsigntool 0.9.4) stores ``struct tm``'s
    zero-based month, and edk2 checks only that Pad1, Nanosecond, TimeZone, Daylight
    and Pad2 are zero, so such an update enrols. bastion never writes month 0.
    """

    year: int
    month: int
    day: int
    hour: int = 0
    minute: int = 0
    second: int = 0
    nanosecond: int = 0
    timezone: int = 0
    daylight: int = 0
    pad1: int = 0
    pad2: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("year", self.year, 1900, 9999),
            ("month", self.month, 0, 12),  # 0: sbvarsign writes tm_mon (0-11), see below
            ("day", self.day, 1, 31),
            ("hour", self.hour, 0, 23),
            ("minute", self.minute, 0, 59),
            ("second", self.second, 0, 59),
            ("nanosecond", self.nanosecond, 0, 999_999_999),
            ("daylight", self.daylight, 0, 255),
            ("pad1", self.pad1, 0, 255),
            ("pad2", self.pad2, 0, 255),
        )
        for name, value, low, high in checks:
            if not low <= value <= high:
                raise FormatError(f"EFI_TIME {name} {value}: expected {low}..{high}")
        if not (-1440 <= self.timezone <= 1440 or self.timezone == 2047):
            raise FormatError(f"EFI_TIME timezone {self.timezone}: expected -1440..1440 or 2047")

    @classmethod
    def from_datetime(cls, when: dt.datetime) -> EfiTime:
        """The UTC time of ``when`` to the second, with every other field 0 (auth form)."""
        if when.tzinfo is None:
            raise FormatError("EFI_TIME from a naive datetime: give a timezone (UTC)")
        u = when.astimezone(dt.UTC)
        return cls(u.year, u.month, u.day, u.hour, u.minute, u.second)

    def to_datetime(self) -> dt.datetime:
        """The calendar fields as an aware UTC datetime (timezone fields ignored)."""
        try:
            return dt.datetime(
                self.year, self.month, self.day, self.hour, self.minute, self.second, tzinfo=dt.UTC
            )
        except ValueError as exc:
            raise FormatError(f"EFI_TIME {self}: not a calendar date: {exc}") from exc

    @property
    def is_authentication_form(self) -> bool:
        """Pad1, Nanosecond, TimeZone, Daylight and Pad2 all 0 (UEFI 8.2.2 requires it)."""
        return not (self.pad1 or self.nanosecond or self.timezone or self.daylight or self.pad2)

    def to_bytes(self) -> bytes:
        """The 16-byte EFI_TIME."""
        return struct.pack(
            "<HBBBBBBIhBB",
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.pad1,
            self.nanosecond,
            self.timezone,
            self.daylight,
            self.pad2,
        )

    @classmethod
    def parse(cls, data: bytes) -> EfiTime:
        """Decode exactly 16 bytes."""
        if len(data) != EFI_TIME_SIZE:
            raise FormatError(f"EFI_TIME is {len(data)} bytes, expected {EFI_TIME_SIZE}")
        y, mo, d, h, mi, s, p1, ns, tz, dl, p2 = struct.unpack("<HBBBBBBIhBB", data)
        return cls(y, mo, d, h, mi, s, ns, tz, dl, p1, p2)

    def __str__(self) -> str:
        return (
            f"{self.year:04d}-{self.month:02d}-{self.day:02d} "
            f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}"
        )


# --- EFI_SIGNATURE_LIST ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignatureData:
    """One EFI_SIGNATURE_DATA: the owner GUID and the data (certificate DER, digest ...)."""

    owner: uuid.UUID
    data: bytes

    def to_bytes(self) -> bytes:
        """Owner GUID followed by the data."""
        return guid_bytes(self.owner) + self.data


@dataclass(frozen=True, slots=True)
class SignatureList:
    """One EFI_SIGNATURE_LIST: a type, an optional header and same-size entries."""

    signature_type: uuid.UUID
    signatures: tuple[SignatureData, ...]
    header: bytes = b""

    def __post_init__(self) -> None:
        if not self.signatures:
            raise FormatError("EFI_SIGNATURE_LIST with no entries")
        sizes = {len(s.data) for s in self.signatures}
        if len(sizes) != 1:
            raise FormatError(f"EFI_SIGNATURE_LIST entries differ in size: {sorted(sizes)}")
        size = sizes.pop()
        if self.signature_type in (EFI_CERT_X509_GUID, EFI_CERT_SHA256_GUID) and self.header:
            raise FormatError(
                f"EFI_SIGNATURE_LIST of type {self.signature_type}: header must be empty"
            )
        if self.signature_type == EFI_CERT_SHA256_GUID and size != SHA256_SIZE:
            raise FormatError(f"EFI_CERT_SHA256 entry is {size} bytes, expected {SHA256_SIZE}")
        if self.signature_type == EFI_CERT_X509_GUID and size == 0:
            raise FormatError("EFI_CERT_X509 entry with an empty certificate")
        if SIGNATURE_OWNER_SIZE + size > EFI_SIGNATURE_MAX_SIZE:
            raise LimitError(
                f"EFI_SIGNATURE_DATA of {SIGNATURE_OWNER_SIZE + size} bytes, "
                f"limit {EFI_SIGNATURE_MAX_SIZE}"
            )

    @property
    def signature_size(self) -> int:
        """SignatureSize: owner GUID plus one entry's data."""
        return SIGNATURE_OWNER_SIZE + len(self.signatures[0].data)

    @classmethod
    def x509(cls, owner: uuid.UUID, certificate_der: bytes) -> SignatureList:
        """A list holding one X.509 certificate (what ``cert-to-efi-sig-list`` writes)."""
        return cls(EFI_CERT_X509_GUID, (SignatureData(owner, certificate_der),))

    @classmethod
    def sha256(cls, owner: uuid.UUID, digests: Iterable[bytes]) -> SignatureList:
        """A list of SHA-256 digests (image hashes for db or dbx)."""
        return cls(EFI_CERT_SHA256_GUID, tuple(SignatureData(owner, d) for d in digests))

    def to_bytes(self) -> bytes:
        """The list header, its header bytes and the entries."""
        body = b"".join(s.to_bytes() for s in self.signatures)
        size = SIGLIST_HEADER_SIZE + len(self.header) + len(body)
        head = guid_bytes(self.signature_type)
        return (
            head
            + struct.pack("<III", size, len(self.header), self.signature_size)
            + (self.header + body)
        )


def encode_signature_lists(lists: Iterable[SignatureList]) -> bytes:
    """A variable's data: the lists one after the other (empty means "no entries")."""
    return b"".join(sl.to_bytes() for sl in lists)


def parse_signature_lists(data: bytes) -> tuple[SignatureList, ...]:
    """Decode a variable's data: zero or more EFI_SIGNATURE_LISTs filling it exactly."""
    if len(data) > EFI_VARIABLE_MAX_SIZE:
        raise LimitError(f"signature database is {len(data)} bytes, limit {EFI_VARIABLE_MAX_SIZE}")
    out: list[SignatureList] = []
    entries = 0
    pos = 0
    while pos < len(data):
        if len(out) >= EFI_SIGLIST_MAX_LISTS:
            raise LimitError(f"more than {EFI_SIGLIST_MAX_LISTS} EFI_SIGNATURE_LISTs")
        if pos + SIGLIST_HEADER_SIZE > len(data):
            raise FormatError(
                f"EFI_SIGNATURE_LIST at offset {pos}: header truncated "
                f"({len(data) - pos} of {SIGLIST_HEADER_SIZE} bytes)"
            )
        sig_type = parse_guid(data, pos)
        list_size, header_size, sig_size = struct.unpack_from("<III", data, pos + 16)
        where = f"EFI_SIGNATURE_LIST at offset {pos}"
        if list_size > len(data) - pos:
            raise FormatError(f"{where}: ListSize {list_size}, only {len(data) - pos} bytes remain")
        if sig_size <= SIGNATURE_OWNER_SIZE:
            raise FormatError(f"{where}: SignatureSize {sig_size}, expected more than 16")
        if sig_size > EFI_SIGNATURE_MAX_SIZE:
            raise LimitError(f"{where}: SignatureSize {sig_size}, limit {EFI_SIGNATURE_MAX_SIZE}")
        if list_size < SIGLIST_HEADER_SIZE + header_size:
            raise FormatError(f"{where}: ListSize {list_size} < 28 + HeaderSize {header_size}")
        body = list_size - SIGLIST_HEADER_SIZE - header_size
        if body == 0 or body % sig_size:
            raise FormatError(
                f"{where}: {body} entry bytes are not a positive multiple of SignatureSize "
                f"{sig_size}"
            )
        count = body // sig_size
        entries += count
        if entries > EFI_SIGLIST_MAX_ENTRIES:
            raise LimitError(f"more than {EFI_SIGLIST_MAX_ENTRIES} EFI_SIGNATURE_DATA entries")
        start = pos + SIGLIST_HEADER_SIZE
        header = bytes(data[start : start + header_size])
        first = start + header_size
        sigs = tuple(
            SignatureData(
                parse_guid(data, first + i * sig_size),
                bytes(data[first + i * sig_size + 16 : first + (i + 1) * sig_size]),
            )
            for i in range(count)
        )
        out.append(SignatureList(sig_type, sigs, header))
        pos += list_size
    return tuple(out)


# --- authenticated writes ----------------------------------------------------------------


def encode_variable_name(name: str) -> bytes:
    """UTF-16LE without the terminating NUL (as the authenticated write signs it)."""
    if not name or len(name) > EFI_VARIABLE_NAME_MAX_CHARS or "\0" in name:
        raise FormatError(
            f"variable name {name!r}: expected 1-{EFI_VARIABLE_NAME_MAX_CHARS} characters, no NUL"
        )
    try:
        return name.encode("utf-16-le")
    except UnicodeEncodeError as exc:
        raise FormatError(f"variable name {name!r} is not valid UTF-16: {exc}") from exc


def signable_bytes(
    name: str, vendor: uuid.UUID, attributes: int, timestamp: EfiTime, data: bytes
) -> bytes:
    """What a time-based authenticated write of ``data`` signs (UEFI 8.2.2 step 2)."""
    if not 0 <= attributes <= 0xFFFFFFFF:
        raise FormatError(f"attributes 0x{attributes:x} do not fit a UINT32")
    return (
        encode_variable_name(name)
        + guid_bytes(vendor)
        + struct.pack("<I", attributes)
        + timestamp.to_bytes()
        + data
    )


@dataclass(frozen=True, slots=True)
class AuthenticatedVariable:
    """An EFI_VARIABLE_AUTHENTICATION_2 and the data after it (a ``.auth`` file)."""

    timestamp: EfiTime
    signed_data: bytes  # CertData: the DER PKCS#7 SignedData
    data: bytes

    @property
    def header_size(self) -> int:
        """Bytes before the variable data."""
        return EFI_TIME_SIZE + WIN_CERTIFICATE_UEFI_GUID_SIZE + len(self.signed_data)

    def to_bytes(self) -> bytes:
        """EFI_TIME, WIN_CERTIFICATE_UEFI_GUID with the SignedData, then the data."""
        return (
            self.timestamp.to_bytes()
            + struct.pack(
                "<IHH",
                WIN_CERTIFICATE_UEFI_GUID_SIZE + len(self.signed_data),
                WIN_CERT_REVISION_2_0,
                WIN_CERT_TYPE_EFI_GUID,
            )
            + guid_bytes(EFI_CERT_TYPE_PKCS7_GUID)
            + self.signed_data
            + self.data
        )

    @classmethod
    def parse(cls, data: bytes) -> AuthenticatedVariable:
        """Decode a ``.auth`` file; FormatError for anything firmware would refuse to read."""
        if len(data) > EFI_VARIABLE_MAX_SIZE:
            raise LimitError(
                f"authenticated variable is {len(data)} bytes, limit {EFI_VARIABLE_MAX_SIZE}"
            )
        fixed = EFI_TIME_SIZE + WIN_CERTIFICATE_UEFI_GUID_SIZE
        if len(data) < fixed:
            raise FormatError(
                f"EFI_VARIABLE_AUTHENTICATION_2 truncated: {len(data)} of {fixed} header bytes"
            )
        timestamp = EfiTime.parse(bytes(data[:EFI_TIME_SIZE]))
        length, revision, cert_type = struct.unpack_from("<IHH", data, EFI_TIME_SIZE)
        if revision != WIN_CERT_REVISION_2_0:
            raise FormatError(f"WIN_CERTIFICATE wRevision 0x{revision:04x}, expected 0x0200")
        if cert_type != WIN_CERT_TYPE_EFI_GUID:
            raise FormatError(
                f"WIN_CERTIFICATE wCertificateType 0x{cert_type:04x}, expected 0x0EF1 (EFI_GUID)"
            )
        cert_guid = parse_guid(data, EFI_TIME_SIZE + 8)
        if cert_guid != EFI_CERT_TYPE_PKCS7_GUID:
            raise FormatError(f"WIN_CERTIFICATE_UEFI_GUID CertType {cert_guid}: expected PKCS#7")
        if length <= WIN_CERTIFICATE_UEFI_GUID_SIZE:
            raise FormatError(f"WIN_CERTIFICATE dwLength {length}: no CertData")
        if length - WIN_CERTIFICATE_UEFI_GUID_SIZE > EFI_AUTH_CERT_MAX_SIZE:
            raise LimitError(f"WIN_CERTIFICATE dwLength {length}, limit {EFI_AUTH_CERT_MAX_SIZE}")
        end = EFI_TIME_SIZE + length
        if end > len(data):
            raise FormatError(
                f"WIN_CERTIFICATE dwLength {length} runs past the end ({len(data)} bytes)"
            )
        return cls(timestamp, bytes(data[fixed:end]), bytes(data[end:]))
