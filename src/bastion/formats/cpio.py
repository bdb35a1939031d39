"""The ``newc`` cpio archive (SVR4 "070701", no checksum): the format of a Linux initramfs.

Pure codec. :func:`archive` writes entries in the given order and closes with the
``TRAILER!!!`` entry; :func:`parse` reads an archive back. Each entry is a 110-byte
ASCII header (magic, then 13 fields of 8 hex digits: inode, mode, uid, gid, nlink,
mtime, file size, device major/minor, rdev major/minor, name size including its NUL,
check = 0), the NUL-terminated name padded to a multiple of 4 bytes counted from the
start of the header, then the data padded to a multiple of 4. A symbolic link's data is
its target. The kernel's ``init/initramfs.c`` is the reader that matters: it accepts
exactly this layout, and an archive may be followed by zero padding and further
archives (the kernel and systemd-stub concatenate them).

Written archives are reproducible: inode numbers are assigned in order from 1 and the
caller chooses every other field (bastion builders use uid = gid = 0, mtime = 0).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

from bastion.errors import FormatError, LimitError
from bastion.limits import CPIO_MAX_ENTRIES, CPIO_MAX_NAME_SIZE

MAGIC = b"070701"
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
_FIELDS = 13
_MAX_FIELD = 0xFFFFFFFF


def _pad4(length: int) -> int:
    return (4 - length % 4) % 4


@dataclass(frozen=True, slots=True)
class CpioEntry:
    """One archive member: ``mode`` holds the file type bits and the permissions."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    nlink: int = 1
    rdev_major: int = 0
    rdev_minor: int = 0

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("/") or "\0" in self.name:
            raise FormatError(f"cpio name {self.name!r} must be relative and non-empty")
        if self.name != "." and any(part in ("", ".", "..") for part in self.name.split("/")):
            raise FormatError(f"cpio name {self.name!r} has an empty, '.' or '..' component")
        for label, value in (
            ("mode", self.mode),
            ("uid", self.uid),
            ("gid", self.gid),
            ("mtime", self.mtime),
            ("nlink", self.nlink),
            ("rdev major", self.rdev_major),
            ("rdev minor", self.rdev_minor),
            ("size", len(self.data)),
        ):
            if not 0 <= value <= _MAX_FIELD:
                raise FormatError(f"cpio {label} {value} of {self.name!r} out of range")
        if self.is_dir and self.data:
            raise FormatError(f"cpio directory {self.name!r} cannot carry data")

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> CpioEntry:
        return cls(name, stat.S_IFDIR | perm, nlink=2)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode("utf-8"))

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, rdev_major=major, rdev_minor=minor)


def _header(entry: CpioEntry, ino: int, name: bytes) -> bytes:
    fields = (
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        entry.nlink,
        entry.mtime,
        len(entry.data),
        0,
        0,
        entry.rdev_major,
        entry.rdev_minor,
        len(name) + 1,
        0,
    )
    return MAGIC + b"".join(b"%08X" % value for value in fields)


def _member(header: bytes, name: bytes, data: bytes) -> bytes:
    head = header + name + b"\0"
    return head + b"\0" * _pad4(len(head)) + data + b"\0" * _pad4(len(data))


def archive(entries: Iterable[CpioEntry]) -> bytes:
    """The archive of ``entries`` (in order) followed by the trailer."""
    chunks: list[bytes] = []
    seen: set[str] = set()
    for ino, entry in enumerate(entries, 1):
        if entry.name in seen:
            raise FormatError(f"cpio archive names {entry.name!r} twice")
        seen.add(entry.name)
        name = entry.name.encode("utf-8")
        chunks.append(_member(_header(entry, ino, name), name, entry.data))
    trailer = CpioEntry(TRAILER, 0, nlink=1)
    name = TRAILER.encode()
    chunks.append(_member(_header(trailer, 0, name), name, b""))
    return b"".join(chunks)


def _field(header: bytes, index: int) -> int:
    raw = header[6 + 8 * index : 14 + 8 * index]
    try:
        text = raw.decode("ascii")
        if len(text) != 8 or not all(c in "0123456789abcdefABCDEF" for c in text):
            raise ValueError(text)
        return int(text, 16)
    except ValueError as exc:
        raise FormatError(f"cpio header field {index} is not 8 hex digits: {raw!r}") from exc


def parse(data: bytes) -> tuple[CpioEntry, ...]:
    """The entries of the first archive in ``data`` (trailer excluded).

    Raises FormatError on a bad magic, field, name or truncation, LimitError past
    :data:`CPIO_MAX_ENTRIES` entries or a name longer than :data:`CPIO_MAX_NAME_SIZE`.
    """
    view = memoryview(data)
    offset = 0
    out: list[CpioEntry] = []
    while True:
        if offset + HEADER_SIZE > len(view):
            raise FormatError(f"cpio archive truncated at offset {offset} (no trailer)")
        header = bytes(view[offset : offset + HEADER_SIZE])
        if header[:6] != MAGIC:
            raise FormatError(f"cpio magic at offset {offset} is {header[:6]!r}, expected 070701")
        values = [_field(header, i) for i in range(_FIELDS)]
        (_ino, mode, uid, gid, nlink, mtime, size, _maj, _min, rmaj, rmin, namesize, _chk) = values
        if namesize < 2:
            raise FormatError(f"cpio name size {namesize} at offset {offset}")
        if namesize > CPIO_MAX_NAME_SIZE:
            raise LimitError(f"cpio name of {namesize} bytes (limit {CPIO_MAX_NAME_SIZE})")
        name_start = offset + HEADER_SIZE
        data_start = name_start + namesize
        data_start += _pad4(data_start - offset)
        end = data_start + size
        if end > len(view):
            raise FormatError(f"cpio entry at offset {offset} runs past the archive end")
        raw_name = bytes(view[name_start : name_start + namesize])
        if raw_name[-1:] != b"\0" or b"\0" in raw_name[:-1]:
            raise FormatError(f"cpio name at offset {offset} is not NUL-terminated")
        try:
            name = raw_name[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"cpio name at offset {offset} is not UTF-8") from exc
        if name == TRAILER:
            return tuple(out)
        if len(out) >= CPIO_MAX_ENTRIES:
            raise LimitError(f"cpio archive has more than {CPIO_MAX_ENTRIES} entries")
        out.append(
            CpioEntry(
                name,
                mode,
                bytes(view[data_start:end]),
                uid=uid,
                gid=gid,
                mtime=mtime,
                nlink=nlink,
                rdev_major=rmaj,
                rdev_minor=rmin,
            )
        )
        offset = end + _pad4(size)
