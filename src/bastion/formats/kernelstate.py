"""Kernel state files a device reports as posture: procfs, sysfs, efivarfs, dmsetup.

One parser per source, each bytes in, a frozen value out, :class:`FormatError` on
anything else (where each format is documented, in the Linux tree unless said):

* ``/proc/sys/kernel/randomize_va_space``: one decimal digit 0, 1 or 2 and a newline
  (Documentation/admin-guide/sysctl/kernel.rst, "randomize_va_space").
* ``/sys/fs/selinux/enforce``: ``0`` (permissive) or ``1`` (enforcing), no newline
  (security/selinux/selinuxfs.c ``sel_read_enforce``; selinuxfs(5) in libselinux).
* ``/sys/kernel/security/lsm``: the active LSMs, comma separated, no newline
  (Documentation/admin-guide/LSM/index.rst).
* ``/sys/kernel/security/lockdown``: the three levels, the active one in brackets,
  e.g. ``none [integrity] confidentiality`` (security/lockdown/lockdown.c
  ``lockdown_read``; kernel_lockdown(7)).
* efivarfs ``SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c``: u32 attributes (LE)
  then the UINT8 value, 1 when Secure Boot is on (Documentation/filesystems/efivarfs.rst;
  UEFI 2.10 section 3.3, "SecureBoot").
* ``/sys/module/module/parameters/sig_enforce``: ``Y`` or ``N`` and a newline (a bool
  module parameter, kernel/params.c ``param_get_bool``; kernel/module/signing.c).
* ``/proc/cmdline``: the command line, a newline (Documentation/filesystems/proc.rst).
* ``/proc/net/{tcp,tcp6,udp,udp6}``: a header line, then one socket per line
  ``sl: local rem st tx:rx tr:when retrnsmt uid timeout inode ...`` where addresses
  are hex ``ADDR:PORT``; ADDR is the in-kernel ``__be32`` words printed as host-order
  integers (so little-endian bytes on x86 and arm64), PORT is plain big hex; ``st`` is
  the TCP state (0A = LISTEN; 07 = CLOSE, an unconnected UDP socket)
  (Documentation/networking/proc_net_tcp.rst; net/ipv4/tcp_ipv4.c ``get_tcp4_sock``).
* ``/proc/self/mountinfo``: ``id parent MAJ:MIN root mountpoint opts [tags] - fstype
  source superopts`` (Documentation/filesystems/proc.rst, "mountinfo"; proc(5)).
* ``/sys/block/dm-N/dev`` ``MAJ:MIN``; ``dm/name``, ``dm/uuid`` (Documentation/ABI/
  testing/sysfs-block-dm); veritysetup names its mappings' uuids ``CRYPT-VERITY-...``
  (cryptsetup lib/libdevmapper.c).
* ``dmsetup status`` lines ``[name: ]start length target args``; a verity target's
  first argument is ``V`` (every block checked so far was valid) or ``C`` (corruption
  seen) (Documentation/admin-guide/device-mapper/verity.rst, "Status").

Pure: no file is opened here (device/posture.py reads them).
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Literal

from bastion.errors import FormatError, LimitError
from bastion.limits import (
    ATTEST_POSTURE_MAX_STRING,
    POSTURE_FILE_MAX_SIZE,
    POSTURE_TABLE_MAX_ROWS,
    POSTURE_TABLE_MAX_SIZE,
)

SECURE_BOOT_VARIABLE = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
VERITY_UUID_PREFIX = "CRYPT-VERITY-"
TCP_LISTEN = 0x0A
TCP_CLOSE = 0x07

ByteOrder = Literal["little", "big"]


class Aslr(enum.IntEnum):
    """``randomize_va_space``: 0 off, 1 stack/mmap/vdso, 2 also the heap (brk)."""

    OFF = 0
    CONSERVATIVE = 1
    FULL = 2


class SelinuxMode(enum.StrEnum):
    ENFORCING = "enforcing"
    PERMISSIVE = "permissive"


class Lockdown(enum.StrEnum):
    NONE = "none"
    INTEGRITY = "integrity"
    CONFIDENTIALITY = "confidentiality"


class VerityStatus(enum.StrEnum):
    VERIFIED = "verified"  # V
    CORRUPTED = "corrupted"  # C


@dataclass(frozen=True, slots=True)
class Socket:
    """One row of a /proc/net table: local and remote endpoint and TCP state."""

    protocol: str  # tcp, tcp6, udp, udp6
    local_address: ipaddress.IPv4Address | ipaddress.IPv6Address
    local_port: int
    remote_address: ipaddress.IPv4Address | ipaddress.IPv6Address
    remote_port: int
    state: int

    @property
    def listening(self) -> bool:
        """TCP in LISTEN; UDP bound and unconnected (what ``ss -l`` shows)."""
        if self.protocol.startswith("tcp"):
            return self.state == TCP_LISTEN
        return self.state == TCP_CLOSE and self.remote_port == 0 and self.local_port != 0


@dataclass(frozen=True, slots=True)
class Mount:
    """One row of mountinfo: the device number and where it is mounted."""

    major: int
    minor: int
    mount_point: str
    fstype: str
    source: str


@dataclass(frozen=True, slots=True)
class DmTarget:
    """One ``dmsetup status`` line."""

    name: str | None
    start: int
    length: int
    target: str
    args: tuple[str, ...]


def _small(data: bytes, what: str, limit: int = POSTURE_FILE_MAX_SIZE) -> str:
    if len(data) > limit:
        raise LimitError(f"{what}: {len(data)} bytes, limit is {limit}")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{what}: not ASCII") from exc


def _one_line(data: bytes, what: str) -> str:
    text = _small(data, what)
    body = text.removesuffix("\n")
    if "\n" in body or "\0" in body:
        raise FormatError(f"{what}: expected one line, got {text[:40]!r}")
    return body


def parse_aslr(data: bytes) -> Aslr:
    """``/proc/sys/kernel/randomize_va_space``."""
    body = _one_line(data, "randomize_va_space")
    if body not in ("0", "1", "2"):
        raise FormatError(f"randomize_va_space: expected 0, 1 or 2, got {body[:20]!r}")
    return Aslr(int(body))


def parse_selinux_enforce(data: bytes) -> SelinuxMode:
    """``/sys/fs/selinux/enforce``."""
    body = _one_line(data, "selinux enforce")
    modes = {"0": SelinuxMode.PERMISSIVE, "1": SelinuxMode.ENFORCING}
    if body not in modes:
        raise FormatError(f"selinux enforce: expected 0 or 1, got {body[:20]!r}")
    return modes[body]


_LSM_NAME = re.compile(r"[a-z0-9_]{1,64}")


def parse_lsm(data: bytes) -> tuple[str, ...]:
    """``/sys/kernel/security/lsm``: the active LSMs in their order."""
    body = _one_line(data, "lsm")
    names = tuple(body.split(",")) if body else ()
    for name in names:
        if not _LSM_NAME.fullmatch(name):
            raise FormatError(f"lsm: bad module name {name[:70]!r}")
    if len(set(names)) != len(names):
        raise FormatError("lsm: a module is listed twice")
    return names


def parse_lockdown(data: bytes) -> Lockdown:
    """``/sys/kernel/security/lockdown``: the bracketed level."""
    words = _one_line(data, "lockdown").split(" ")
    chosen = [w[1:-1] for w in words if w.startswith("[") and w.endswith("]") and len(w) > 2]
    plain = [w.strip("[]") for w in words]
    known = {m.value for m in Lockdown}
    if not words or any(w not in known for w in plain) or len(set(plain)) != len(plain):
        raise FormatError(f"lockdown: expected lockdown levels, got {words[:4]!r}")
    if len(chosen) != 1 or sum("[" in w or "]" in w for w in words) != 1:
        raise FormatError("lockdown: expected exactly one [level]")
    return Lockdown(chosen[0])


def parse_secure_boot(data: bytes) -> bool:
    """The efivarfs ``SecureBoot`` file: u32 attributes + one byte, 0 or 1."""
    if len(data) != 5:
        raise FormatError(f"SecureBoot variable: expected 5 bytes, got {len(data)}")
    (attributes,) = struct.unpack_from("<I", data)
    if attributes & 0x2 == 0:  # EFI_VARIABLE_BOOTSERVICE_ACCESS is always set on it
        raise FormatError(f"SecureBoot variable: attributes {attributes:#x} lack boot access")
    if data[4] not in (0, 1):
        raise FormatError(f"SecureBoot variable: value {data[4]} is neither 0 nor 1")
    return data[4] == 1


def parse_bool_parameter(data: bytes, what: str = "module parameter") -> bool:
    """A bool module parameter such as ``sig_enforce``: ``Y`` or ``N``."""
    body = _one_line(data, what)
    if body not in ("Y", "N"):
        raise FormatError(f"{what}: expected Y or N, got {body[:20]!r}")
    return body == "Y"


def parse_cmdline(data: bytes) -> str:
    """``/proc/cmdline``: printable UTF-8 text, at most one trailing newline."""
    if len(data) > ATTEST_POSTURE_MAX_STRING:
        raise LimitError(f"cmdline: {len(data)} bytes, limit is {ATTEST_POSTURE_MAX_STRING}")
    try:
        text = data.decode("utf-8").removesuffix("\n")
    except UnicodeDecodeError as exc:
        raise FormatError("cmdline: not UTF-8") from exc
    if not text.isprintable():
        raise FormatError("cmdline: holds control characters")
    return text.strip()


def parse_dev_number(data: bytes) -> tuple[int, int]:
    """A sysfs ``dev`` file: ``MAJ:MIN``."""
    body = _one_line(data, "dev")
    match = re.fullmatch(r"(\d{1,10}):(\d{1,10})", body)
    if match is None:
        raise FormatError(f"dev: expected MAJ:MIN, got {body[:40]!r}")
    return int(match.group(1)), int(match.group(2))


def parse_dm_attribute(data: bytes, what: str) -> str:
    """``dm/name`` or ``dm/uuid``: one line of printable text (uuid may be empty)."""
    body = _one_line(data, what)
    if len(body) > 128 or not body.isprintable() or " " in body:
        raise FormatError(f"{what}: not a device-mapper {what}: {body[:40]!r}")
    return body


def _address(text: str, byteorder: ByteOrder) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if len(text) not in (8, 32) or not re.fullmatch(r"[0-9A-Fa-f]+", text):
        raise FormatError(f"/proc/net address {text[:40]!r} is not 8 or 32 hex digits")
    words = [int(text[i : i + 8], 16).to_bytes(4, byteorder) for i in range(0, len(text), 8)]
    raw = b"".join(words)
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


def _endpoint(
    text: str, byteorder: ByteOrder
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    addr, sep, port = text.partition(":")
    if not sep or not re.fullmatch(r"[0-9A-Fa-f]{4}", port):
        raise FormatError(f"/proc/net endpoint {text[:50]!r} is not ADDR:PORT")
    return _address(addr, byteorder), int(port, 16)


def parse_net_table(
    data: bytes, protocol: str, byteorder: ByteOrder = "little"
) -> tuple[Socket, ...]:
    """``/proc/net/<protocol>``; ``byteorder`` is the host's (``sys.byteorder``)."""
    if protocol not in ("tcp", "tcp6", "udp", "udp6"):
        raise ValueError(f"unknown protocol {protocol!r}")
    text = _small(data, f"/proc/net/{protocol}", POSTURE_TABLE_MAX_SIZE)
    lines = text.splitlines()
    if not lines or not lines[0].split()[:2] == ["sl", "local_address"]:
        raise FormatError(f"/proc/net/{protocol}: no header line")
    if len(lines) - 1 > POSTURE_TABLE_MAX_ROWS:
        raise LimitError(f"/proc/net/{protocol}: more than {POSTURE_TABLE_MAX_ROWS} sockets")
    width = 8 if protocol in ("tcp", "udp") else 32
    out = []
    for line in lines[1:]:
        cols = line.split()
        if len(cols) < 10 or not re.fullmatch(r"\d+:", cols[0]):
            raise FormatError(f"/proc/net/{protocol}: bad row {line[:60]!r}")
        local, remote = _endpoint(cols[1], byteorder), _endpoint(cols[2], byteorder)
        if len(cols[1]) != width + 5 or len(cols[2]) != width + 5:
            raise FormatError(f"/proc/net/{protocol}: address width is not {width} hex digits")
        if not re.fullmatch(r"[0-9A-Fa-f]{2}", cols[3]):
            raise FormatError(f"/proc/net/{protocol}: bad state {cols[3][:10]!r}")
        out.append(Socket(protocol, local[0], local[1], remote[0], remote[1], int(cols[3], 16)))
    return tuple(out)


def listening_ports(sockets: tuple[Socket, ...]) -> tuple[int, ...]:
    """The sorted distinct local ports of the listening sockets."""
    return tuple(sorted({s.local_port for s in sockets if s.listening}))


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(data: bytes) -> tuple[Mount, ...]:
    """``/proc/self/mountinfo``."""
    if len(data) > POSTURE_TABLE_MAX_SIZE:
        raise LimitError(f"mountinfo: {len(data)} bytes, limit is {POSTURE_TABLE_MAX_SIZE}")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise FormatError("mountinfo: not UTF-8") from exc
    if len(lines) > POSTURE_TABLE_MAX_ROWS:
        raise LimitError(f"mountinfo: more than {POSTURE_TABLE_MAX_ROWS} mounts")
    out = []
    for line in lines:
        cols = line.split(" ")
        if "-" not in cols[6:]:
            raise FormatError(f"mountinfo: no separator in {line[:60]!r}")
        sep = cols.index("-", 6)
        if len(cols) != sep + 4 or not (cols[0].isdigit() and cols[1].isdigit()):
            raise FormatError(f"mountinfo: bad row {line[:60]!r}")
        major, minor = parse_dev_number(cols[2].encode())
        out.append(Mount(major, minor, _unescape(cols[4]), cols[sep + 1], _unescape(cols[sep + 2])))
    return tuple(out)


def root_mount(mounts: tuple[Mount, ...]) -> Mount | None:
    """The mount that is ``/`` now: the last one listed there (it hides earlier ones)."""
    roots = [m for m in mounts if m.mount_point == "/"]
    return roots[-1] if roots else None


def parse_dmsetup_status(data: bytes) -> tuple[DmTarget, ...]:
    """``dmsetup status [NAME]`` output."""
    text = _small(data, "dmsetup status", POSTURE_FILE_MAX_SIZE)
    out = []
    for line in text.splitlines():
        if line == "No devices found":
            continue
        name: str | None = None
        head, sep, rest = line.partition(": ")
        if sep:
            name, line = head, rest
        cols = line.split()
        if len(cols) < 3 or not (cols[0].isdigit() and cols[1].isdigit()):
            raise FormatError(f"dmsetup status: bad line {line[:60]!r}")
        if not re.fullmatch(r"[a-z0-9_-]{1,32}", cols[2]):
            raise FormatError(f"dmsetup status: bad target {cols[2][:40]!r}")
        out.append(DmTarget(name, int(cols[0]), int(cols[1]), cols[2], tuple(cols[3:])))
    return tuple(out)


def verity_status(targets: tuple[DmTarget, ...]) -> VerityStatus | None:
    """V/C of the verity target(s); None when no target is verity. Any C wins."""
    verity = [t for t in targets if t.target == "verity"]
    if not verity:
        return None
    flags = [t.args[0] if t.args else "" for t in verity]
    if any(f not in ("V", "C") for f in flags):
        raise FormatError(f"dmsetup status: verity status {flags!r} is not V or C")
    return VerityStatus.CORRUPTED if "C" in flags else VerityStatus.VERIFIED
