"""LUKS2 JSON metadata: keyslots, segments, digests, tokens, config, and their rules.

Pure. ``parse_json_area`` takes the JSON area of a header copy (JSON text, then NUL bytes
only) and returns a validated :class:`Metadata`; ``Metadata.to_bytes()`` writes compact
JSON as cryptsetup (json-c PLAIN) does. Every object keeps its unknown fields
(``extra``; tokens keep all fields) and writes them back unchanged. 64-bit values are
decimal strings, binary values base64, ids decimal strings. Refused with FormatError:
keyslot types other than ``luks2``, unknown KDFs, ciphers other than aes-xts-plain64,
integrity segments, duplicate keys, bytes after the NUL, overlapping areas, dangling
references, counts above the limits in :mod:`bastion.limits`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bastion import limits
from bastion.errors import FormatError, LimitError
from bastion.formats import strict_json

BINARY_HEADER_SIZE = 4096
KDF_SALT_SIZE = 32
DEFAULT_CIPHER = "aes-xts-plain64"
SUPPORTED_CIPHERS = ("aes-xts-plain64",)
DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha512": 64}
_UINT64_RE = re.compile(r"^[0-9]{1,20}$")


class KdfType(enum.StrEnum):
    """Keyslot KDFs bastion implements."""

    PBKDF2 = "pbkdf2"
    ARGON2I = "argon2i"
    ARGON2ID = "argon2id"


# --- JSON value helpers -------------------------------------------------------------------


def _u64(value: Any, what: str) -> int:
    if not isinstance(value, str) or not _UINT64_RE.match(value):
        raise FormatError(f"LUKS2 {what}: expected a decimal string-uint64, got {value!r}")
    n = int(value)
    if n >= 1 << 64:
        raise FormatError(f"LUKS2 {what}: {n} does not fit 64 bits")
    return n


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise FormatError(f"LUKS2 {what}: expected an integer in {lo}..{hi}, got {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"LUKS2 {what}: expected a string, got {type(value).__name__}")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"LUKS2 {what}: expected an object, got {type(value).__name__}")
    return value


def _b64(value: Any, what: str) -> bytes:
    text = _str(value, what)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise FormatError(f"LUKS2 {what}: invalid base64") from exc


def _b64s(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _id(key: str, what: str, maximum: int) -> int:
    if not re.fullmatch(r"0|[1-9][0-9]{0,2}", key) or int(key) >= maximum:
        raise FormatError(f"LUKS2 {what} id {key!r}: expected a decimal number below {maximum}")
    return int(key)


def _ids(value: Any, what: str, maximum: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise FormatError(f"LUKS2 {what}: expected a list of ids")
    out = tuple(_id(_str(v, what), what, maximum) for v in value)
    if len(set(out)) != len(out):
        raise FormatError(f"LUKS2 {what}: duplicate ids")
    return out


def _extra(obj: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in known}


# --- metadata objects ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pbkdf2Params:
    """PBKDF2 parameters of a keyslot (also the shape of a volume-key digest's KDF)."""

    hash: str
    iterations: int
    salt: bytes

    @property
    def type(self) -> KdfType:
        return KdfType.PBKDF2

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "pbkdf2",
            "hash": self.hash,
            "iterations": self.iterations,
            "salt": _b64s(self.salt),
        }


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2i / Argon2id parameters of a keyslot; ``memory`` in KiB, ``cpus`` = lanes."""

    type: KdfType
    time: int
    memory: int
    cpus: int
    salt: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "time": self.time,
            "memory": self.memory,
            "cpus": self.cpus,
            "salt": _b64s(self.salt),
        }


KdfParams = Pbkdf2Params | Argon2Params


def parse_kdf(obj: Any, what: str) -> KdfParams:
    """Parse a keyslot ``kdf`` object; unknown types are refused."""
    kdf = _obj(obj, what)
    kind = _str(kdf.get("type"), f"{what}.type")
    salt = _b64(kdf.get("salt"), f"{what}.salt")
    if len(salt) != KDF_SALT_SIZE:
        raise FormatError(f"LUKS2 {what}.salt: expected 32 bytes, got {len(salt)}")
    if kind == "pbkdf2":
        hash_name = _str(kdf.get("hash"), f"{what}.hash")
        if hash_name not in DIGEST_SIZES:
            raise FormatError(f"LUKS2 {what}.hash: unsupported hash {hash_name!r}")
        iterations = _int(
            kdf.get("iterations"), f"{what}.iterations", 1, limits.LUKS2_MAX_PBKDF2_ITERATIONS
        )
        return Pbkdf2Params(hash_name, iterations, salt)
    if kind in ("argon2i", "argon2id"):
        return Argon2Params(
            KdfType(kind),
            _int(kdf.get("time"), f"{what}.time", 1, limits.LUKS2_MAX_ARGON2_TIME),
            _int(kdf.get("memory"), f"{what}.memory", 8, limits.LUKS2_MAX_ARGON2_MEMORY_KIB),
            _int(kdf.get("cpus"), f"{what}.cpus", 1, limits.LUKS2_MAX_ARGON2_PARALLEL),
            salt,
        )
    raise FormatError(f"LUKS2 {what}: unknown KDF type {kind!r} (expected pbkdf2, argon2i(d))")


@dataclass(frozen=True, slots=True)
class Keyslot:
    """A ``luks2`` keyslot: KDF, AF parameters and its encrypted area."""

    key_size: int
    area_offset: int
    area_size: int
    area_encryption: str
    area_key_size: int
    kdf: KdfParams
    af_hash: str
    af_stripes: int = limits.LUKS2_AF_STRIPES
    priority: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Keyslot:
        ks = _obj(obj, what)
        kind = _str(ks.get("type"), f"{what}.type")
        if kind != "luks2":
            raise FormatError(f"LUKS2 {what}: unsupported keyslot type {kind!r} (expected luks2)")
        area = _obj(ks.get("area"), f"{what}.area")
        if _str(area.get("type"), f"{what}.area.type") != "raw":
            raise FormatError(f"LUKS2 {what}.area: unsupported area type {area.get('type')!r}")
        encryption = _str(area.get("encryption"), f"{what}.area.encryption")
        if encryption not in SUPPORTED_CIPHERS:
            raise FormatError(f"LUKS2 {what}.area: unsupported cipher {encryption!r}")
        af = _obj(ks.get("af"), f"{what}.af")
        if _str(af.get("type"), f"{what}.af.type") != "luks1":
            raise FormatError(f"LUKS2 {what}.af: unsupported AF type {af.get('type')!r}")
        stripes = _int(af.get("stripes"), f"{what}.af.stripes", 1, 1 << 20)
        if stripes != limits.LUKS2_AF_STRIPES:
            raise FormatError(f"LUKS2 {what}.af.stripes: expected 4000, got {stripes}")
        af_hash = _str(af.get("hash"), f"{what}.af.hash")
        if af_hash not in DIGEST_SIZES:
            raise FormatError(f"LUKS2 {what}.af.hash: unsupported hash {af_hash!r}")
        priority = ks.get("priority")
        if priority is not None:
            priority = _int(priority, f"{what}.priority", 0, 2)
        area_key_size = _int(area.get("key_size"), f"{what}.area.key_size", 32, 64)
        if area_key_size not in (32, 64):
            raise FormatError(f"LUKS2 {what}.area.key_size: expected 32 or 64")
        return cls(
            key_size=_int(ks.get("key_size"), f"{what}.key_size", 1, limits.LUKS2_MAX_KEY_SIZE),
            area_offset=_u64(area.get("offset"), f"{what}.area.offset"),
            area_size=_u64(area.get("size"), f"{what}.area.size"),
            area_encryption=encryption,
            area_key_size=area_key_size,
            kdf=parse_kdf(ks.get("kdf"), f"{what}.kdf"),
            af_hash=af_hash,
            af_stripes=stripes,
            priority=priority,
            extra=_extra(ks, ("type", "key_size", "area", "kdf", "af", "priority")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "luks2",
            "key_size": self.key_size,
            "af": {"type": "luks1", "stripes": self.af_stripes, "hash": self.af_hash},
            "area": {
                "type": "raw",
                "offset": str(self.area_offset),
                "size": str(self.area_size),
                "encryption": self.area_encryption,
                "key_size": self.area_key_size,
            },
            "kdf": self.kdf.to_json(),
        }
        if self.priority is not None:
            out["priority"] = self.priority
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Segment:
    """A ``crypt`` data segment; ``size`` None means ``"dynamic"`` (to the end)."""

    offset: int
    size: int | None
    iv_tweak: int
    encryption: str
    sector_size: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Segment:
        seg = _obj(obj, what)
        if _str(seg.get("type"), f"{what}.type") != "crypt":
            raise FormatError(f"LUKS2 {what}: unsupported segment type {seg.get('type')!r}")
        encryption = _str(seg.get("encryption"), f"{what}.encryption")
        if encryption not in SUPPORTED_CIPHERS:
            raise FormatError(f"LUKS2 {what}: unsupported cipher {encryption!r}")
        if "integrity" in seg:
            raise FormatError(f"LUKS2 {what}: authenticated encryption is not supported")
        sector_size = _int(seg.get("sector_size"), f"{what}.sector_size", 512, 4096)
        if sector_size & (sector_size - 1):
            raise FormatError(f"LUKS2 {what}.sector_size {sector_size} is not a power of two")
        raw_size = seg.get("size")
        size = None if raw_size == "dynamic" else _u64(raw_size, f"{what}.size")
        offset = _u64(seg.get("offset"), f"{what}.offset")
        if offset % sector_size or (size is not None and size % sector_size):
            raise FormatError(f"LUKS2 {what}: offset/size not aligned to {sector_size}")
        return cls(
            offset=offset,
            size=size,
            iv_tweak=_u64(seg.get("iv_tweak"), f"{what}.iv_tweak"),
            encryption=encryption,
            sector_size=sector_size,
            extra=_extra(seg, ("type", "offset", "size", "iv_tweak", "encryption", "sector_size")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "crypt",
            "offset": str(self.offset),
            "size": "dynamic" if self.size is None else str(self.size),
            "iv_tweak": str(self.iv_tweak),
            "encryption": self.encryption,
            "sector_size": self.sector_size,
        }
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Digest:
    """A ``pbkdf2`` digest over the volume key, tying keyslots to segments."""

    keyslots: tuple[int, ...]
    segments: tuple[int, ...]
    hash: str
    iterations: int
    salt: bytes
    digest: bytes
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Digest:
        dg = _obj(obj, what)
        if _str(dg.get("type"), f"{what}.type") != "pbkdf2":
            raise FormatError(f"LUKS2 {what}: unsupported digest type {dg.get('type')!r}")
        hash_name = _str(dg.get("hash"), f"{what}.hash")
        if hash_name not in DIGEST_SIZES:
            raise FormatError(f"LUKS2 {what}.hash: unsupported hash {hash_name!r}")
        digest = _b64(dg.get("digest"), f"{what}.digest")
        if not 1 <= len(digest) <= DIGEST_SIZES[hash_name]:
            raise FormatError(f"LUKS2 {what}.digest: bad length {len(digest)}")
        salt = _b64(dg.get("salt"), f"{what}.salt")
        if not 1 <= len(salt) <= 64:
            raise FormatError(f"LUKS2 {what}.salt: bad length {len(salt)}")
        return cls(
            keyslots=_ids(dg.get("keyslots"), f"{what}.keyslots", limits.LUKS2_MAX_KEYSLOTS),
            segments=_ids(dg.get("segments"), f"{what}.segments", limits.LUKS2_MAX_SEGMENTS),
            hash=hash_name,
            iterations=_int(
                dg.get("iterations"), f"{what}.iterations", 1, limits.LUKS2_MAX_PBKDF2_ITERATIONS
            ),
            salt=salt,
            digest=digest,
            extra=_extra(
                dg, ("type", "keyslots", "segments", "hash", "iterations", "salt", "digest")
            ),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "pbkdf2",
            "keyslots": [str(k) for k in self.keyslots],
            "segments": [str(s) for s in self.segments],
            "hash": self.hash,
            "iterations": self.iterations,
            "salt": _b64s(self.salt),
            "digest": _b64s(self.digest),
        }
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Token:
    """A token: its type, the keyslots it unlocks and every other field, kept verbatim."""

    type: str
    keyslots: tuple[int, ...]
    fields: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Token:
        tk = _obj(obj, what)
        return cls(
            type=_str(tk.get("type"), f"{what}.type"),
            keyslots=_ids(tk.get("keyslots"), f"{what}.keyslots", limits.LUKS2_MAX_KEYSLOTS),
            fields=_extra(tk, ("type", "keyslots")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "keyslots": [str(k) for k in self.keyslots]}
        out.update(self.fields)
        return out


@dataclass(frozen=True, slots=True)
class Config:
    """The ``config`` object: area sizes, flags and requirements."""

    json_size: int
    keyslots_size: int
    flags: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any) -> Config:
        cfg = _obj(obj, "config")
        flags = cfg.get("flags", [])
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise FormatError("LUKS2 config.flags: expected a list of strings")
        reqs: list[str] = []
        if "requirements" in cfg:
            req = _obj(cfg["requirements"], "config.requirements")
            mandatory = req.get("mandatory", [])
            if not isinstance(mandatory, list) or not all(isinstance(m, str) for m in mandatory):
                raise FormatError("LUKS2 config.requirements.mandatory: expected strings")
            reqs = list(mandatory)
        return cls(
            json_size=_u64(cfg.get("json_size"), "config.json_size"),
            keyslots_size=_u64(cfg.get("keyslots_size"), "config.keyslots_size"),
            flags=tuple(flags),
            requirements=tuple(reqs),
            extra=_extra(cfg, ("json_size", "keyslots_size", "flags", "requirements")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "json_size": str(self.json_size),
            "keyslots_size": str(self.keyslots_size),
        }
        if self.flags:
            out["flags"] = list(self.flags)
        if self.requirements:
            out["requirements"] = {"mandatory": list(self.requirements)}
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Metadata:
    """The whole JSON metadata of a LUKS2 header."""

    keyslots: Mapping[int, Keyslot]
    tokens: Mapping[int, Token]
    segments: Mapping[int, Segment]
    digests: Mapping[int, Digest]
    config: Config
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown top-level objects

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "keyslots": {str(k): v.to_json() for k, v in sorted(self.keyslots.items())},
            "tokens": {str(k): v.to_json() for k, v in sorted(self.tokens.items())},
            "segments": {str(k): v.to_json() for k, v in sorted(self.segments.items())},
            "digests": {str(k): v.to_json() for k, v in sorted(self.digests.items())},
            "config": self.config.to_json(),
        }
        out.update(self.extra)
        return out

    def to_bytes(self) -> bytes:
        """Compact JSON text, as cryptsetup (json-c PLAIN) writes it."""
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=True).encode()

    def with_changes(self, **changes: Any) -> Metadata:
        """A copy with some top-level mappings replaced (validated)."""
        new = replace(self, **changes)
        validate(new, hdr_size=new.config.json_size + BINARY_HEADER_SIZE)
        return new

    def digest_for_keyslot(self, keyslot: int) -> tuple[int, Digest]:
        """The digest that covers ``keyslot``; FormatError if none does."""
        for n, dg in sorted(self.digests.items()):
            if keyslot in dg.keyslots:
                return n, dg
        raise FormatError(f"LUKS2 keyslot {keyslot} has no digest")

    def free_keyslot_id(self) -> int:
        """The lowest unused keyslot id."""
        for n in range(limits.LUKS2_MAX_KEYSLOTS):
            if n not in self.keyslots:
                return n
        raise LimitError(f"LUKS2: all {limits.LUKS2_MAX_KEYSLOTS} keyslots are in use")

    def free_token_id(self) -> int:
        """The lowest unused token id."""
        for n in range(limits.LUKS2_MAX_TOKENS):
            if n not in self.tokens:
                return n
        raise LimitError(f"LUKS2: all {limits.LUKS2_MAX_TOKENS} tokens are in use")


def _section(doc: dict[str, Any], name: str, maximum: int) -> dict[str, Any]:
    sec = _obj(doc.get(name), name)
    if len(sec) > maximum:
        raise LimitError(f"LUKS2 {name}: {len(sec)} entries, limit is {maximum}")
    return sec


def parse_json_area(area: bytes) -> Metadata:
    """Parse and validate a JSON area (JSON text, then NUL bytes only)."""
    if not area.startswith(b"{"):
        raise FormatError("LUKS2 JSON area does not start with '{'")
    end = area.find(b"\0")
    if end < 0:
        raise FormatError("LUKS2 JSON area has no terminating NUL byte")
    if area[end:].count(0) != len(area) - end:
        raise FormatError("LUKS2 JSON area has non-NUL bytes after the JSON text")
    doc = strict_json.loads(area[:end], what="LUKS2 JSON area", max_size=len(area))
    metadata = metadata_from_json(doc)
    validate(metadata, hdr_size=len(area) + BINARY_HEADER_SIZE)
    return metadata


def metadata_from_json(value: Any) -> Metadata:
    """Build Metadata from a parsed JSON document (structure checks only)."""
    doc = _obj(value, "JSON root")
    keyslots = {
        _id(k, "keyslot", limits.LUKS2_MAX_KEYSLOTS): Keyslot.from_json(v, f"keyslot {k}")
        for k, v in _section(doc, "keyslots", limits.LUKS2_MAX_KEYSLOTS).items()
    }
    tokens = {
        _id(k, "token", limits.LUKS2_MAX_TOKENS): Token.from_json(v, f"token {k}")
        for k, v in _section(doc, "tokens", limits.LUKS2_MAX_TOKENS).items()
    }
    segments = {
        _id(k, "segment", limits.LUKS2_MAX_SEGMENTS): Segment.from_json(v, f"segment {k}")
        for k, v in _section(doc, "segments", limits.LUKS2_MAX_SEGMENTS).items()
    }
    digests = {
        _id(k, "digest", limits.LUKS2_MAX_DIGESTS): Digest.from_json(v, f"digest {k}")
        for k, v in _section(doc, "digests", limits.LUKS2_MAX_DIGESTS).items()
    }
    extra = _extra(doc, ("keyslots", "tokens", "segments", "digests", "config"))
    return Metadata(keyslots, tokens, segments, digests, Config.from_json(doc.get("config")), extra)


def validate(m: Metadata, *, hdr_size: int) -> None:
    """Cross-object rules of cryptsetup's validator; FormatError on the first violation."""
    if m.config.json_size != hdr_size - BINARY_HEADER_SIZE:
        raise FormatError(
            f"LUKS2 config.json_size is {m.config.json_size}, "
            f"expected {hdr_size - BINARY_HEADER_SIZE} from the binary header"
        )
    ks_size = m.config.keyslots_size
    if ks_size % 4096 or ks_size > limits.LUKS2_MAX_KEYSLOTS_SIZE:
        raise FormatError(f"LUKS2 config.keyslots_size {ks_size} is not 4 KiB-aligned or too big")
    lo, hi = 2 * hdr_size, 2 * hdr_size + ks_size
    areas: list[tuple[int, int, str]] = []
    for n, ks in m.keyslots.items():
        if ks.area_size == 0 or ks.area_offset < lo or ks.area_offset + ks.area_size > hi:
            raise FormatError(
                f"LUKS2 keyslot {n} area [{ks.area_offset}, +{ks.area_size}) is outside "
                f"the keyslots area [{lo}, {hi})"
            )
        if ks.area_offset % 4096:
            raise FormatError(f"LUKS2 keyslot {n} area offset is not 4 KiB-aligned")
        needed = ks.key_size * ks.af_stripes
        if ks.area_size < needed:
            raise FormatError(f"LUKS2 keyslot {n} area is {ks.area_size} bytes, needs {needed}")
        areas.append((ks.area_offset, ks.area_offset + ks.area_size, f"keyslot {n}"))
    for n, seg in m.segments.items():
        if seg.offset < hi:
            raise FormatError(f"LUKS2 segment {n} starts at {seg.offset}, inside the metadata")
        areas.append(
            (seg.offset, (1 << 64) if seg.size is None else seg.offset + seg.size, f"segment {n}")
        )
    areas.sort()
    for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(areas):
        if start_b < end_a:
            raise FormatError(f"LUKS2 {name_a} overlaps {name_b}")
    dynamic = [n for n, s in m.segments.items() if s.size is None]
    if dynamic and dynamic != [max(m.segments)]:
        raise FormatError("LUKS2: only the last segment may have a dynamic size")
    covered: set[int] = set()
    for n, dg in m.digests.items():
        for k in dg.keyslots:
            if k not in m.keyslots:
                raise FormatError(f"LUKS2 digest {n} names missing keyslot {k}")
        for s in dg.segments:
            if s not in m.segments:
                raise FormatError(f"LUKS2 digest {n} names missing segment {s}")
        covered.update(dg.segments)
    for s in m.segments:
        if s not in covered:
            raise FormatError(f"LUKS2 segment {s} has no digest")
    for n, tk in m.tokens.items():
        if tk.type.startswith("luks2-") and tk.type != "luks2-keyring":
            raise FormatError(f"LUKS2 token {n}: reserved type {tk.type!r}")
        for k in tk.keyslots:
            if k not in m.keyslots:
                raise FormatError(f"LUKS2 token {n} names missing keyslot {k}")
