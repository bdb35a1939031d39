"""Boot containers: the boot archive, the bootloader stage and the boot unit. Pure.

One container format carries all three (``BSTNARC1``, little-endian)::

    0   8  magic
    8   4  kind (1 = boot archive, 2 = bootloader stage, 3 = boot unit)
    12  4  entry count n
    16  n x 32  entries: name (16 bytes, NUL-padded ASCII), u64 offset, u64 size
    ... data, each entry 8-byte aligned, in entry order, zero padding between

Names are unique; offsets must be in order, aligned, non-overlapping and inside the
container, so every byte of a container is accounted for and one container has one
encoding. The boot unit's sections follow the UKI's canonical order (``.linux .osrel
.cmdline .initrd``) then bastion's own (``.svn .modcert .veritycert .modules``). The
signed statement over a unit lists each section's SHA-256 (:func:`unit_statement`), so
a verifier can name the section that changed.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import struct
from dataclasses import dataclass

from bastion.errors import FormatError, LimitError
from bastion.formats import strict_json
from bastion.limits import (
    BOOT_CONTAINER_MAX_ENTRIES,
    BOOT_CONTAINER_MAX_SIZE,
    VERITY_SIG_MAX_SIZE,
)

MAGIC = b"BSTNARC1"
_HEAD = struct.Struct("<8sII")
_ENTRY = struct.Struct("<16sQQ")
ALIGN = 8

UNIT_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".svn", ".modcert", ".veritycert")
UNIT_OPTIONAL = (".modules",)
UNIT_ORDER = UNIT_SECTIONS[:4] + UNIT_SECTIONS[4:] + UNIT_OPTIONAL

STATEMENT_TYPE_UNIT = "application/vnd.bastion.boot-unit+json"
STATEMENT_TYPE_LOADER = "application/vnd.bastion.bootloader+json"
#: the bootloader stage's identity (its ``.version`` section)
LOADER_VERSION = "bastion-loader 1"


class Kind(enum.IntEnum):
    """What a container holds."""

    ARCHIVE = 1
    LOADER = 2
    UNIT = 3


@dataclass(frozen=True, slots=True)
class Container:
    """Named byte entries of one kind."""

    kind: Kind
    entries: tuple[tuple[str, bytes], ...]

    def get(self, name: str) -> bytes:
        for key, value in self.entries:
            if key == name:
                return value
        raise FormatError(f"{self.kind.name.lower()} container has no entry {name!r}")

    def names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.entries)

    def to_bytes(self) -> bytes:
        names = self.names()
        if len(set(names)) != len(names):
            raise FormatError(f"duplicate entry names in {names}")
        if len(names) > BOOT_CONTAINER_MAX_ENTRIES:
            raise LimitError(f"{len(names)} entries, limit {BOOT_CONTAINER_MAX_ENTRIES}")
        table = bytearray()
        data = bytearray()
        base = _HEAD.size + _ENTRY.size * len(self.entries)
        base = _align(base)
        for name, value in self.entries:
            raw = name.encode("ascii")
            if not 0 < len(raw) <= 16 or b"\0" in raw:
                raise FormatError(f"entry name {name!r} must be 1..16 ASCII characters")
            table += _ENTRY.pack(raw.ljust(16, b"\0"), base + len(data), len(value))
            data += value
            data += bytes(_align(len(data)) - len(data))
        head = _HEAD.pack(MAGIC, self.kind, len(self.entries)) + table
        return bytes(head.ljust(base, b"\0") + data)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def parse(data: bytes, kind: Kind | None = None) -> Container:
    """Parse a container (of ``kind`` if given); FormatError on any inconsistency."""
    data = bytes(data)
    if len(data) > BOOT_CONTAINER_MAX_SIZE:
        raise LimitError(f"container of {len(data)} bytes, limit {BOOT_CONTAINER_MAX_SIZE}")
    if len(data) < _HEAD.size:
        raise FormatError(f"container truncated: {len(data)} bytes, header needs {_HEAD.size}")
    magic, raw_kind, count = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"container magic is {magic!r}, expected {MAGIC!r}")
    try:
        found = Kind(raw_kind)
    except ValueError:
        raise FormatError(f"container kind {raw_kind} is unknown") from None
    if kind is not None and found != kind:
        raise FormatError(f"container is a {found.name.lower()}, expected {kind.name.lower()}")
    if count > BOOT_CONTAINER_MAX_ENTRIES:
        raise LimitError(f"container declares {count} entries, limit {BOOT_CONTAINER_MAX_ENTRIES}")
    table_end = _HEAD.size + count * _ENTRY.size
    if table_end > len(data):
        raise FormatError(f"container entry table of {count} entries is truncated")
    expected = _align(table_end)
    if any(data[table_end:expected]):
        raise FormatError("non-zero padding after the container entry table")
    entries = []
    for i in range(count):
        raw, offset, size = _ENTRY.unpack_from(data, _HEAD.size + i * _ENTRY.size)
        name_bytes = raw.rstrip(b"\0")
        if not name_bytes or b"\0" in name_bytes or not name_bytes.isascii():
            raise FormatError(f"container entry {i} has a malformed name {raw!r}")
        if offset != expected:
            raise FormatError(f"container entry {i} at offset {offset}, expected {expected}")
        if offset + size > len(data):
            raise FormatError(
                f"container entry {name_bytes.decode()!r} ends at {offset + size}, "
                f"container is {len(data)} bytes"
            )
        end = offset + size
        expected = _align(end)
        if any(data[end:expected]):
            raise FormatError(f"non-zero padding after entry {name_bytes.decode()!r}")
        entries.append((name_bytes.decode(), data[offset:end]))
    if expected != len(data):
        raise FormatError(f"container has {len(data) - expected} trailing bytes")
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise FormatError(f"duplicate entry names in container: {names}")
    return Container(found, tuple(entries))


# --- boot unit ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BootUnit:
    """Kernel, initrd, command line, os-release, security version and trusted certs."""

    linux: bytes
    osrel: bytes
    cmdline: bytes
    initrd: bytes
    security_version: int
    modcert: bytes
    veritycert: bytes
    modules: tuple[tuple[str, bytes], ...] = ()

    def sections(self) -> tuple[tuple[str, bytes], ...]:
        """The sections in canonical (measurement) order."""
        out = [
            (".linux", self.linux),
            (".osrel", self.osrel),
            (".cmdline", self.cmdline),
            (".initrd", self.initrd),
            (".svn", str(self.security_version).encode()),
            (".modcert", self.modcert),
            (".veritycert", self.veritycert),
        ]
        if self.modules:
            out.append((".modules", Container(Kind.ARCHIVE, self.modules).to_bytes()))
        return tuple(out)

    def to_bytes(self) -> bytes:
        return Container(Kind.UNIT, self.sections()).to_bytes()

    def cmdline_params(self) -> dict[str, str]:
        """``key=value`` words of the command line (bare words map to "")."""
        return parse_cmdline(self.cmdline)


def parse_cmdline(cmdline: bytes) -> dict[str, str]:
    """Split a kernel command line into its ``key=value`` words."""
    try:
        text = cmdline.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("kernel command line is not ASCII") from None
    out: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        out[key] = value
    return out


def parse_unit(data: bytes) -> BootUnit:
    """Parse a boot unit: sections exactly in canonical order, svn a decimal integer."""
    container = parse(data, Kind.UNIT)
    names = container.names()
    expected = UNIT_SECTIONS + tuple(n for n in UNIT_OPTIONAL if n in names)
    if names != expected:
        raise FormatError(f"boot unit sections {list(names)}, expected {list(expected)}")
    svn_text = container.get(".svn")
    if not svn_text.isdigit() or len(svn_text) > 19:
        raise FormatError(f"boot unit .svn {svn_text[:20]!r} is not a decimal integer")
    modules: tuple[tuple[str, bytes], ...] = ()
    if ".modules" in names:
        modules = parse(container.get(".modules"), Kind.ARCHIVE).entries
    return BootUnit(
        linux=container.get(".linux"),
        osrel=container.get(".osrel"),
        cmdline=container.get(".cmdline"),
        initrd=container.get(".initrd"),
        security_version=int(svn_text),
        modcert=container.get(".modcert"),
        veritycert=container.get(".veritycert"),
        modules=modules,
    )


def section_digests(sections: tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    """Section name -> lower-case hex SHA-256."""
    return {name: hashlib.sha256(value).hexdigest() for name, value in sections}


def unit_statement(unit: BootUnit, slot: str, version: str) -> bytes:
    """The canonical JSON statement the boot key signs for one slot's unit."""
    doc = {
        "type": "boot-unit",
        "slot": slot,
        "version": version,
        "security_version": unit.security_version,
        "sha256": hashlib.sha256(unit.to_bytes()).hexdigest(),
        "sections": section_digests(unit.sections()),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# --- bootloader stage --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoaderStage:
    """The bootloader stage: its identity and the public key boot units must be signed by."""

    version: str
    boot_key: bytes  # PEM SubjectPublicKeyInfo of the boot signing key

    def to_bytes(self) -> bytes:
        return Container(
            Kind.LOADER, ((".version", self.version.encode()), (".bootkey", self.boot_key))
        ).to_bytes()


def parse_loader(data: bytes) -> LoaderStage:
    """Parse the bootloader stage container."""
    container = parse(data, Kind.LOADER)
    if container.names() != (".version", ".bootkey"):
        raise FormatError(f"bootloader sections {list(container.names())} are not as expected")
    try:
        version = container.get(".version").decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("bootloader version is not ASCII") from None
    return LoaderStage(version, container.get(".bootkey"))


def loader_statement(loader_bytes: bytes) -> bytes:
    """The canonical JSON statement the platform root key signs for the bootloader."""
    doc = {
        "type": "bootloader",
        "sha256": hashlib.sha256(loader_bytes).hexdigest(),
        "size": len(loader_bytes),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# --- DPS root-verity-sig partition -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VeritySignature:
    """The Discoverable Partitions Specification verity signature partition JSON.

    ``signature`` is a DER PKCS#7 SignedData over the lower-case hex ``root_hash`` string;
    ``certificate_fingerprint`` the SHA-256 of the signer certificate's DER.
    """

    root_hash: bytes
    signature: bytes
    certificate_fingerprint: bytes

    def to_bytes(self) -> bytes:
        """Compact JSON, NUL-padded to a multiple of 4096 bytes."""
        doc = {
            "rootHash": self.root_hash.hex(),
            "signature": base64.b64encode(self.signature).decode(),
            "certificateFingerprint": self.certificate_fingerprint.hex(),
        }
        raw = json.dumps(doc, separators=(",", ":")).encode()
        return raw + bytes(-len(raw) % 4096 or 0)


def parse_verity_signature(data: bytes) -> VeritySignature:
    """Parse the partition: JSON then only NUL bytes; strict field types."""
    if len(data) > VERITY_SIG_MAX_SIZE:
        data = data[:VERITY_SIG_MAX_SIZE]
    text, _, rest = bytes(data).partition(b"\0")
    if any(rest):
        raise FormatError("verity signature partition has non-NUL bytes after the JSON")
    doc = strict_json.loads_object(
        text, what="verity signature partition JSON", max_size=VERITY_SIG_MAX_SIZE
    )
    try:
        root = bytes.fromhex(doc["rootHash"])
        if doc["rootHash"] != root.hex():
            raise ValueError("rootHash is not lower-case hex")
        sig = base64.b64decode(doc["signature"], validate=True)
        fpr = bytes.fromhex(doc.get("certificateFingerprint", ""))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, binascii.Error) as exc:
        raise FormatError(f"verity signature partition JSON is malformed: {exc}") from exc
    if len(root) < 20 or not sig:
        raise FormatError("verity signature partition: empty rootHash or signature")
    return VeritySignature(root, sig, fpr)
