"""TCG PC Client crypto-agile event log: parse, serialize, replay. Pure.

Layout (TCG PC Client Platform Firmware Profile §9.4, Linux ``tpm_eventlog.h``), all
integers little-endian:

* first event: a legacy ``TCG_PCR_EVENT`` (u32 pcr, u32 type = EV_NO_ACTION, 20 zero
  bytes, u32 size, data) whose data is ``TCG_EfiSpecIdEvent``: "Spec ID Event03\\0",
  u32 platformClass, u8 minor, u8 major, u8 errata, u8 uintnSize, u32 numAlgs,
  numAlgs x {u16 algId, u16 digestSize}, u8 vendorInfoSize, vendorInfo;
* every later event: ``TCG_PCR_EVENT2``: u32 pcr, u32 type, u32 digest count,
  count x {u16 algId, digest of the size the header gives}, u32 size, data.

:func:`replay` recomputes PCRs: ``PCR = H(PCR || digest)`` for every event except
EV_NO_ACTION; an EV_NO_ACTION "StartupLocality" event sets PCR 0's initial value to
``0..0 || locality``.

The legacy SHA-1 log (TPM 1.2 firmware, and TPM 2.0 firmware that logs only SHA-1) has
no Spec ID Event03 header: every event, the first included, is a ``TCG_PCR_EVENT``
(u32 pcr, u32 type, 20-byte SHA-1 digest, u32 size, data). :func:`parse` reads such a
log as an :class:`EventLog` with ``legacy=True`` and one SHA-1 bank; a first event
carrying the TPM 1.2 "Spec ID Event00" header is kept as an ordinary EV_NO_ACTION event.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from bastion.errors import FormatError, LimitError
from bastion.limits import (
    EVENTLOG_MAX_ALGORITHMS,
    EVENTLOG_MAX_EVENT_DATA,
    EVENTLOG_MAX_EVENTS,
    EVENTLOG_MAX_SIZE,
)

SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
LEGACY_SPEC_ID_SIGNATURE = b"Spec ID Event00\0"  # TPM 1.2 TCG_PCClientSpecIDEventStruct
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\0"
PCR_COUNT = 24

#: TPM_ALG_ID -> (hashlib name, digest size)
ALGORITHMS: dict[int, tuple[str, int]] = {
    0x0004: ("sha1", 20),
    0x000B: ("sha256", 32),
    0x000C: ("sha384", 48),
    0x000D: ("sha512", 64),
}
ALG_SHA1 = 0x0004
ALG_SHA256 = 0x000B


class EventType(enum.IntEnum):
    """Event types bastion writes or names (TCG PFP §10.4.1)."""

    EV_PREBOOT_CERT = 0x0
    EV_POST_CODE = 0x1
    EV_NO_ACTION = 0x3
    EV_SEPARATOR = 0x4
    EV_ACTION = 0x5
    EV_EVENT_TAG = 0x6
    EV_S_CRTM_CONTENTS = 0x7
    EV_S_CRTM_VERSION = 0x8
    EV_IPL = 0xD
    EV_EFI_ACTION = 0x80000007


@dataclass(frozen=True, slots=True)
class SpecIdEvent:
    """The TCG_EfiSpecIdEvent header: which banks the log carries and their sizes."""

    algorithms: tuple[tuple[int, int], ...] = ((ALG_SHA256, 32),)
    platform_class: int = 0
    spec_minor: int = 0
    spec_major: int = 2
    spec_errata: int = 0
    uintn_size: int = 2
    vendor_info: bytes = b""

    def digest_size(self, alg_id: int) -> int:
        """Digest size the header declares for ``alg_id``."""
        for alg, size in self.algorithms:
            if alg == alg_id:
                return size
        raise FormatError(f"algorithm {alg_id:#06x} is not declared in the Spec ID event")

    def to_bytes(self) -> bytes:
        if len(self.vendor_info) > 255:
            raise FormatError("vendor info longer than 255 bytes")
        out = bytearray(SPEC_ID_SIGNATURE)
        out += struct.pack(
            "<IBBBBI",
            self.platform_class,
            self.spec_minor,
            self.spec_major,
            self.spec_errata,
            self.uintn_size,
            len(self.algorithms),
        )
        for alg, size in self.algorithms:
            out += struct.pack("<HH", alg, size)
        out += bytes([len(self.vendor_info)]) + self.vendor_info
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Event:
    """One TCG_PCR_EVENT2: PCR, type, one digest per bank, event data."""

    pcr: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]
    data: bytes

    def digest(self, alg_id: int) -> bytes:
        """This event's digest in the ``alg_id`` bank."""
        for alg, value in self.digests:
            if alg == alg_id:
                return value
        raise FormatError(f"event for PCR {self.pcr} has no digest for algorithm {alg_id:#06x}")


@dataclass(frozen=True, slots=True)
class EventLog:
    """A whole event log: crypto-agile, or the legacy SHA-1 format when ``legacy``."""

    spec: SpecIdEvent
    events: tuple[Event, ...]
    legacy: bool = False

    def to_bytes(self) -> bytes:
        if self.legacy:
            return self._legacy_bytes()
        header = self.spec.to_bytes()
        out = bytearray(struct.pack("<II", 0, EventType.EV_NO_ACTION))
        out += bytes(20) + struct.pack("<I", len(header)) + header
        for ev in self.events:
            out += struct.pack("<III", ev.pcr, ev.event_type, len(ev.digests))
            for alg, value in ev.digests:
                if len(value) != self.spec.digest_size(alg):
                    raise FormatError(f"digest for {alg:#06x} has {len(value)} bytes")
                out += struct.pack("<H", alg) + value
            out += struct.pack("<I", len(ev.data)) + ev.data
        return bytes(out)

    def _legacy_bytes(self) -> bytes:
        out = bytearray()
        for ev in self.events:
            digest = ev.digest(ALG_SHA1)
            if len(ev.digests) != 1 or len(digest) != 20:
                raise FormatError("a legacy event log event carries exactly one SHA-1 digest")
            out += struct.pack("<II", ev.pcr, ev.event_type) + digest
            out += struct.pack("<I", len(ev.data)) + ev.data
        return bytes(out)


def measure(pcr: int, event_type: int, data: bytes, content: bytes | None = None) -> Event:
    """A sha256-bank event whose digest hashes ``content`` (or ``data`` when content is None)."""
    measured = data if content is None else content
    return Event(pcr, event_type, ((ALG_SHA256, _hash(ALG_SHA256, measured)),), data)


def _hash(alg_id: int, data: bytes) -> bytes:
    name, _ = ALGORITHMS[alg_id]
    return hashlib.new(name, data).digest()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatError(
                f"event log truncated reading {what} at offset {self.pos}: need {n} bytes, "
                f"have {len(self.data) - self.pos}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")


def _parse_spec(data: bytes) -> SpecIdEvent:
    r = _Reader(data)
    if r.take(16, "Spec ID signature") != SPEC_ID_SIGNATURE:
        raise FormatError("first event is not a 'Spec ID Event03' header (not crypto-agile)")
    pclass = r.u32("platformClass")
    minor, major, errata, uintn = (r.u8(n) for n in ("minor", "major", "errata", "uintnSize"))
    count = r.u32("numberOfAlgorithms")
    if not 1 <= count <= EVENTLOG_MAX_ALGORITHMS:
        raise LimitError(f"Spec ID event declares {count} algorithms, limit 1..8")
    algs: list[tuple[int, int]] = []
    for _ in range(count):
        alg, size = r.u16("algorithmId"), r.u16("digestSize")
        known = ALGORITHMS.get(alg)
        if known is not None and known[1] != size:
            raise FormatError(f"algorithm {alg:#06x} declared with size {size}, is {known[1]}")
        if size == 0 or size > 64:
            raise FormatError(f"algorithm {alg:#06x} declared with digest size {size}")
        if any(a == alg for a, _ in algs):
            raise FormatError(f"algorithm {alg:#06x} declared twice")
        algs.append((alg, size))
    vendor = r.take(r.u8("vendorInfoSize"), "vendorInfo")
    if r.pos != len(data):
        raise FormatError(f"{len(data) - r.pos} stray bytes after the Spec ID event")
    return SpecIdEvent(tuple(algs), pclass, minor, major, errata, uintn, vendor)


def _is_crypto_agile(data: bytes) -> bool:
    """Whether the first event is the Spec ID Event03 header (FormatError for other ids)."""
    r = _Reader(data)
    pcr, etype, digest = r.u32("pcrIndex"), r.u32("eventType"), r.take(20, "digest")
    size = r.u32("eventSize")
    head = data[r.pos : r.pos + min(size, 16)]
    if pcr != 0 or etype != EventType.EV_NO_ACTION or digest != bytes(20):
        return False
    if head == SPEC_ID_SIGNATURE:
        return True
    if head.startswith(b"Spec ID Event") and head != LEGACY_SPEC_ID_SIGNATURE:
        raise FormatError(f"first event has an unknown Spec ID header {head!r}")
    return False


def _parse_legacy(r: _Reader) -> EventLog:
    events: list[Event] = []
    while r.pos < len(r.data):
        if len(events) >= EVENTLOG_MAX_EVENTS:
            raise LimitError(f"event log has more than {EVENTLOG_MAX_EVENTS} events")
        pcr, etype = r.u32("pcrIndex"), r.u32("eventType")
        if pcr >= PCR_COUNT:
            raise FormatError(f"event {len(events)} names PCR {pcr}, expected 0..23")
        digest = r.take(20, "SHA-1 digest")
        size = r.u32("eventSize")
        if size > EVENTLOG_MAX_EVENT_DATA:
            raise LimitError(f"event {len(events)} data of {size} bytes exceeds the limit")
        events.append(Event(pcr, etype, ((ALG_SHA1, digest),), r.take(size, "event data")))
    return EventLog(SpecIdEvent(((ALG_SHA1, 20),), spec_major=1), tuple(events), legacy=True)


def parse(data: bytes) -> EventLog:
    """Parse an event log (crypto-agile or legacy SHA-1); FormatError / LimitError if bad."""
    if len(data) > EVENTLOG_MAX_SIZE:
        raise LimitError(f"event log is {len(data)} bytes, limit {EVENTLOG_MAX_SIZE}")
    r = _Reader(bytes(data))
    if not _is_crypto_agile(r.data):
        return _parse_legacy(r)
    pcr, etype = r.u32("pcrIndex"), r.u32("eventType")
    if pcr != 0 or etype != EventType.EV_NO_ACTION or r.take(20, "digest") != bytes(20):
        raise FormatError("first event is not the EV_NO_ACTION Spec ID header on PCR 0")
    size = r.u32("eventSize")
    if size > EVENTLOG_MAX_EVENT_DATA:
        raise LimitError(f"Spec ID event of {size} bytes")
    spec = _parse_spec(r.take(size, "Spec ID event"))
    fast = _parse_events_fast(r.data, r.pos, spec)
    if fast is not None:
        return EventLog(spec, fast)
    events: list[Event] = []
    while r.pos < len(r.data):
        if len(events) >= EVENTLOG_MAX_EVENTS:
            raise LimitError(f"event log has more than {EVENTLOG_MAX_EVENTS} events")
        pcr, etype, count = r.u32("pcrIndex"), r.u32("eventType"), r.u32("digest count")
        if pcr >= PCR_COUNT:
            raise FormatError(f"event {len(events)} names PCR {pcr}, expected 0..23")
        if count > EVENTLOG_MAX_ALGORITHMS:
            raise LimitError(f"event {len(events)} has {count} digests, limit 8")
        digests = []
        for _ in range(count):
            alg = r.u16("algorithmId")
            digests.append((alg, r.take(spec.digest_size(alg), "digest")))
        size = r.u32("eventSize")
        if size > EVENTLOG_MAX_EVENT_DATA:
            raise LimitError(f"event {len(events)} data of {size} bytes exceeds the limit")
        events.append(Event(pcr, etype, tuple(digests), r.take(size, "event data")))
    return EventLog(spec, tuple(events))


_U32 = struct.Struct("<I")
_U32X3 = struct.Struct("<III")
_U16 = struct.Struct("<H")


def _parse_events_fast(data: bytes, pos: int, spec: SpecIdEvent) -> tuple[Event, ...] | None:
    """The crypto-agile events after the header, or None when anything is off (then the
    careful reader below runs and names the problem). Same checks, fewer calls."""
    sizes = dict(spec.algorithms)
    end = len(data)
    events: list[Event] = []
    try:
        while pos < end:
            if len(events) >= EVENTLOG_MAX_EVENTS:
                return None
            pcr, etype, count = _U32X3.unpack_from(data, pos)
            pos += 12
            if pcr >= PCR_COUNT or count > EVENTLOG_MAX_ALGORITHMS:
                return None
            digests = []
            for _ in range(count):
                (alg,) = _U16.unpack_from(data, pos)
                size = sizes.get(alg)
                if size is None or pos + 2 + size > end:
                    return None
                digests.append((alg, data[pos + 2 : pos + 2 + size]))
                pos += 2 + size
            (size,) = _U32.unpack_from(data, pos)
            pos += 4
            if size > EVENTLOG_MAX_EVENT_DATA or pos + size > end:
                return None
            events.append(Event(pcr, etype, tuple(digests), data[pos : pos + size]))
            pos += size
    except struct.error:
        return None
    return tuple(events)


def startup_locality(event: Event) -> int | None:
    """The locality of a StartupLocality EV_NO_ACTION event, else None."""
    if (
        event.event_type == EventType.EV_NO_ACTION
        and event.pcr == 0
        and len(event.data) == 17
        and event.data.startswith(STARTUP_LOCALITY_SIGNATURE)
    ):
        return event.data[16]
    return None


def replay(events: Iterable[Event], alg_id: int = ALG_SHA256) -> dict[int, bytes]:
    """PCR values (only PCRs that some event touches) after replaying ``events``."""
    name, size = ALGORITHMS.get(alg_id, ("", 0))
    if not name:
        raise FormatError(f"cannot replay unknown algorithm {alg_id:#06x}")
    pcrs: dict[int, bytes] = {}
    new = getattr(hashlib, name)
    zero = bytes(size)
    for event in events:
        if event.event_type == EventType.EV_NO_ACTION:
            locality = startup_locality(event)
            if locality is not None:
                if 0 in pcrs:
                    raise FormatError("StartupLocality event after PCR 0 was extended")
                pcrs[0] = bytes(size - 1) + bytes([locality])
            continue
        current = pcrs.get(event.pcr, zero)
        pcrs[event.pcr] = new(current + event.digest(alg_id)).digest()
    return pcrs
