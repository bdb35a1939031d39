"""LUKS2 JSON metadata: keyslots, segments, digests, tokens, config, and their rules.

Pure. ``parse_json_area`` takes the JSON area of a header copy (JSON text, then NUL bytes
only) and returns a validated :class:`Metadata`; ``Metadata.to_bytes()`` writes compact
JSON as cryptsetup (json-c PLAIN) does. Every object keeps its unknown fields
(``extra``; tokens keep all fields) and writes them back unchanged. 64-bit values are
decimal strings, binary values base64, ids decimal strings.

The header is judged as cryptsetup 2.6 judges it (``LUKS2_hdr_validate`` and the luks2
keyslot validator): what cryptsetup refuses is a FormatError (missing or mistyped fields,
bytes after the NUL, overlapping areas, dangling references, a keyslot named by no digest
or by two, gaps in segment ids, counts above :mod:`bastion.limits`); what cryptsetup
accepts but bastion cannot run (an unknown KDF such as ``argon2``, another cipher, hash
or keyslot type, another segment type, dm-integrity) parses and is marked: the keyslot is
``unusable`` and skipped, the segment ``unsupported`` and its data path refused, each with
a message naming the feature. Deliberately refused at parse time: duplicate JSON keys
(json-c keeps the last one silently), digest types other than pbkdf2 and digest hashes
bastion has no implementation of.
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
DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
_UINT64_RE = re.compile(r"^[0-9]+$")


class KdfType(enum.StrEnum):
    """Keyslot KDFs bastion implements."""

    PBKDF2 = "pbkdf2"
    ARGON2I = "argon2i"
    ARGON2ID = "argon2id"


# --- JSON value helpers -------------------------------------------------------------------


def _u64(value: Any, what: str) -> int:
    if not isinstance(value, str) or not _UINT64_RE.fullmatch(value):
        raise FormatError(f"LUKS2 {what}: expected a decimal string-uint64, got {value!r}")
    digits = value.lstrip("0") or "0"  # leading zeros are fine for strtoull, so for us
    if len(digits) > 20 or int(digits) >= 1 << 64:
        raise FormatError(f"LUKS2 {what}: {digits[:24]} does not fit 64 bits")
    return int(digits)


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


@dataclass(frozen=True, slots=True)
class UnknownKdf:
    """A keyslot KDF bastion cannot run (its name or parameters); kept verbatim."""

    type: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.fields)


KdfParams = Pbkdf2Params | Argon2Params
AnyKdf = Pbkdf2Params | Argon2Params | UnknownKdf


class UnusableError(Exception):
    """Internal: a keyslot or segment is well-formed but bastion cannot use it."""


def _kdf_values(kdf: dict[str, Any], kind: str, what: str) -> KdfParams:
    """Typed KDF parameters; UnusableError when the values are outside what bastion runs."""
    if kind not in ("pbkdf2", "argon2i", "argon2id"):
        raise UnusableError(
            f"KDF {kind!r} is not supported (bastion runs pbkdf2, argon2i, argon2id)"
        )
    try:
        salt = _b64(kdf.get("salt"), f"{what}.salt")
    except FormatError as exc:
        raise UnusableError(str(exc)) from exc
    if len(salt) != KDF_SALT_SIZE:
        raise UnusableError(f"{what}.salt is {len(salt)} bytes, expected {KDF_SALT_SIZE}")
    try:
        if kind == "pbkdf2":
            hash_name = kdf["hash"]
            if hash_name not in DIGEST_SIZES:
                raise UnusableError(f"PBKDF2 hash {hash_name!r} is not supported")
            iterations = _int(
                kdf["iterations"], f"{what}.iterations", 1, limits.LUKS2_MAX_PBKDF2_ITERATIONS
            )
            return Pbkdf2Params(hash_name, iterations, salt)
        cpus = _int(kdf["cpus"], f"{what}.cpus", 1, limits.LUKS2_MAX_ARGON2_PARALLEL)
        memory = _int(kdf["memory"], f"{what}.memory", 8 * cpus, limits.LUKS2_MAX_ARGON2_MEMORY_KIB)
        time = _int(kdf["time"], f"{what}.time", 1, limits.LUKS2_MAX_ARGON2_TIME)
    except FormatError as exc:
        raise UnusableError(f"{kind} parameters: {exc}") from exc
    return Argon2Params(KdfType(kind), time, memory, cpus, salt)


def _kdf_structure(obj: Any, what: str) -> tuple[str, dict[str, Any]]:
    """cryptsetup's structural KDF rules; leftover parameters of another KDF are dropped."""
    kdf = _obj(obj, what)
    kind = _nonempty(kdf.get("type"), f"{what}.type")
    keep = _KDF_FIELDS.get(kind)
    if keep is None:
        return kind, dict(kdf)
    kdf = {k: v for k, v in kdf.items() if k in keep}  # cryptsetup's keyslot repair
    for name in keep:
        if name not in kdf:
            raise FormatError(f"LUKS2 {what}: {kind} needs {name!r}")
    for name in ("hash", "salt"):
        if name in kdf:
            _nonempty(kdf[name], f"{what}.{name}")
    for name in ("iterations", "time", "memory", "cpus"):
        if name in kdf and (not isinstance(kdf[name], int) or isinstance(kdf[name], bool)):
            raise FormatError(f"LUKS2 {what}.{name}: expected an integer, got {kdf[name]!r}")
    return kind, kdf


_KDF_FIELDS = {
    "pbkdf2": ("type", "salt", "hash", "iterations"),
    "argon2i": ("type", "salt", "time", "memory", "cpus"),
    "argon2id": ("type", "salt", "time", "memory", "cpus"),
}


def parse_kdf(obj: Any, what: str) -> KdfParams:
    """Parse a keyslot ``kdf`` object bastion can run; FormatError for anything else."""
    kind, kdf = _kdf_structure(obj, what)
    try:
        return _kdf_values(kdf, kind, what)
    except UnusableError as exc:
        raise FormatError(f"LUKS2 {what}: {exc}") from exc


def _nonempty(value: Any, what: str) -> str:
    text = _str(value, what)
    if not text:
        raise FormatError(f"LUKS2 {what}: empty string")
    return text


def _u32(value: Any, what: str) -> int:
    return _int(value, what, 0, (1 << 32) - 1)


def _numbered_u64(value: Any, what: str) -> int:
    return _u64(_nonempty(value, what), what)


@dataclass(frozen=True, slots=True)
class Keyslot:
    """A keyslot: KDF, AF parameters and its encrypted area.

    ``unusable`` says why bastion cannot open it (a KDF, cipher, hash or keyslot type it
    does not implement, or parameters outside its limits); such a keyslot keeps its JSON
    verbatim in ``raw`` and is skipped when unlocking, as cryptsetup skips what it cannot
    use instead of refusing the whole header.
    """

    key_size: int
    area_offset: int
    area_size: int
    area_encryption: str
    area_key_size: int
    kdf: AnyKdf
    af_hash: str
    af_stripes: int = limits.LUKS2_AF_STRIPES
    priority: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    type: str = "luks2"
    unusable: str | None = None
    raw: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Keyslot:
        ks = _obj(obj, what)
        kind = _nonempty(ks.get("type"), f"{what}.type")
        key_size = _u32(ks.get("key_size"), f"{what}.key_size")
        area = _obj(ks.get("area"), f"{what}.area")
        area_type = _nonempty(area.get("type"), f"{what}.area.type")
        area_offset = _numbered_u64(area.get("offset"), f"{what}.area.offset")
        area_size = _numbered_u64(area.get("size"), f"{what}.area.size")
        priority = ks.get("priority")
        if priority is not None:
            priority = _int(priority, f"{what}.priority", 0, 2)
        if kind != "luks2":
            return cls(
                key_size=key_size,
                area_offset=area_offset,
                area_size=area_size,
                area_encryption=str(area.get("encryption", "")),
                area_key_size=0,
                kdf=UnknownKdf(""),
                af_hash="",
                priority=priority,
                type=kind,
                unusable=f"keyslot type {kind!r} is not supported (bastion opens luks2 keyslots)",
                raw=dict(ks),
            )
        kdf_kind, kdf_obj = _kdf_structure(ks.get("kdf"), f"{what}.kdf")
        af = _obj(ks.get("af"), f"{what}.af")
        if _str(af.get("type"), f"{what}.af.type") != "luks1":
            raise FormatError(f"LUKS2 {what}.af: unsupported AF type {af.get('type')!r}")
        af_hash = _nonempty(af.get("hash"), f"{what}.af.hash")
        stripes = _int(af.get("stripes"), f"{what}.af.stripes", -(1 << 63), (1 << 63) - 1)
        if area_type != "raw":
            raise FormatError(f"LUKS2 {what}.area: unsupported area type {area_type!r}")
        encryption = _nonempty(area.get("encryption"), f"{what}.area.encryption")
        area_key_size = _int(area.get("key_size"), f"{what}.area.key_size", -(1 << 63), 1 << 63)
        raw = dict(ks)
        raw["kdf"] = kdf_obj
        kdf: AnyKdf = UnknownKdf(kdf_kind, kdf_obj)
        unusable: str | None = None
        try:
            kdf = _kdf_values(kdf_obj, kdf_kind, f"{what}.kdf")
            _keyslot_unusable(key_size, area_size, encryption, area_key_size, (af_hash, stripes))
        except UnusableError as exc:
            unusable = f"{what}: {exc}"
        return cls(
            key_size=key_size,
            area_offset=area_offset,
            area_size=area_size,
            area_encryption=encryption,
            area_key_size=area_key_size,
            kdf=kdf,
            af_hash=af_hash,
            af_stripes=stripes,
            priority=priority,
            extra=_extra(ks, ("type", "key_size", "area", "kdf", "af", "priority")),
            unusable=unusable,
            raw=raw if unusable else None,
        )

    def to_json(self) -> dict[str, Any]:
        if self.raw is not None:
            return dict(self.raw)
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


def _keyslot_unusable(
    key_size: int, area_size: int, encryption: str, area_key_size: int, af: tuple[str, int]
) -> None:
    """Raise UnusableError when bastion cannot open a well-formed luks2 keyslot."""
    af_hash, stripes = af
    if encryption not in SUPPORTED_CIPHERS:
        raise UnusableError(f"keyslot area cipher {encryption!r} is not supported")
    if area_key_size not in (32, 64):
        raise UnusableError(f"keyslot area key size {area_key_size} is not 32 or 64 bytes")
    if af_hash not in DIGEST_SIZES:
        raise UnusableError(f"AF hash {af_hash!r} is not supported")
    if stripes != limits.LUKS2_AF_STRIPES:
        raise UnusableError(f"AF stripes {stripes} (bastion opens {limits.LUKS2_AF_STRIPES})")
    if not 1 <= key_size <= limits.LUKS2_MAX_KEY_SIZE:
        raise UnusableError(f"key size {key_size} is outside 1..{limits.LUKS2_MAX_KEY_SIZE}")
    if area_size < key_size * stripes:
        raise UnusableError(f"keyslot area of {area_size} bytes is smaller than the key material")


def _flags(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise FormatError(f"LUKS2 {what}: expected a list of strings")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Segment:
    """A data segment; ``size`` None means ``"dynamic"`` (to the end).

    bastion runs ``crypt`` segments with aes-xts-plain64 and a 512..4096 power-of-two
    sector; other well-formed segments (another type or cipher, dm-integrity, other sector
    sizes) parse, keep their JSON in ``raw`` and say why in ``unsupported``.
    """

    offset: int
    size: int | None
    iv_tweak: int
    encryption: str
    sector_size: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    type: str = "crypt"
    flags: tuple[str, ...] = ()
    unsupported: str | None = None
    raw: Mapping[str, Any] | None = None

    @property
    def is_backup(self) -> bool:
        """A re-encryption backup segment (a ``backup-*`` flag)."""
        return any(f.startswith("backup-") for f in self.flags)

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Segment:
        seg = _obj(obj, what)
        kind = _nonempty(seg.get("type"), f"{what}.type")
        offset = _numbered_u64(seg.get("offset"), f"{what}.offset")
        raw_size = _nonempty(seg.get("size"), f"{what}.size")
        size = None if raw_size == "dynamic" else _u64(raw_size, f"{what}.size")
        if size == 0:
            raise FormatError(f"LUKS2 {what}.size: zero")
        if offset % 512 or (size or 0) % 512:
            raise FormatError(f"LUKS2 {what}: offset/size not aligned to 512 bytes")
        flags = _flags(seg["flags"], f"{what}.flags") if "flags" in seg else ()
        if kind != "crypt":
            return cls(
                offset=offset,
                size=size,
                iv_tweak=0,
                encryption="",
                sector_size=512,
                type=kind,
                flags=flags,
                unsupported=f"segment type {kind!r} is not supported (bastion runs crypt)",
                raw=dict(seg),
            )
        iv_tweak = _numbered_u64(seg.get("iv_tweak"), f"{what}.iv_tweak")
        encryption = _nonempty(seg.get("encryption"), f"{what}.encryption")
        sector_size = _u32(seg.get("sector_size"), f"{what}.sector_size")
        if not sector_size or sector_size % 512:
            raise FormatError(f"LUKS2 {what}.sector_size {sector_size} is not a multiple of 512")
        if size is not None and size % sector_size:
            raise FormatError(f"LUKS2 {what}.size is not aligned to sector_size {sector_size}")
        unsupported = None
        if "integrity" in seg:
            integ = _obj(seg["integrity"], f"{what}.integrity")
            for name in ("type", "journal_encryption", "journal_integrity"):
                _nonempty(integ.get(name), f"{what}.integrity.{name}")
            unsupported = "authenticated encryption (dm-integrity) is not supported"
        elif encryption not in SUPPORTED_CIPHERS:
            unsupported = f"segment cipher {encryption!r} is not supported"
        elif sector_size not in (512, 1024, 2048, 4096):
            unsupported = f"sector size {sector_size} is not supported (512, 1024, 2048, 4096)"
        return cls(
            offset=offset,
            size=size,
            iv_tweak=iv_tweak,
            encryption=encryption,
            sector_size=sector_size,
            extra=_extra(
                seg, ("type", "offset", "size", "iv_tweak", "encryption", "sector_size", "flags")
            ),
            flags=flags,
            unsupported=unsupported,
            raw=dict(seg) if unsupported else None,
        )

    def to_json(self) -> dict[str, Any]:
        if self.raw is not None:
            return dict(self.raw)
        out: dict[str, Any] = {
            "type": "crypt",
            "offset": str(self.offset),
            "size": "dynamic" if self.size is None else str(self.size),
            "iv_tweak": str(self.iv_tweak),
            "encryption": self.encryption,
            "sector_size": self.sector_size,
        }
        if self.flags:
            out["flags"] = list(self.flags)
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
        if _nonempty(dg.get("type"), f"{what}.type") != "pbkdf2":
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
            type=_nonempty(tk.get("type"), f"{what}.type"),
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
        """Compact JSON text, as cryptsetup (json-c PLAIN, NOSLASHESCAPE) writes it:
        non-ASCII text as raw UTF-8 (escaped only if a lone surrogate cannot be UTF-8)."""
        doc = self.to_json()
        try:
            return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError:
            return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()

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
    if hdr_size not in limits.LUKS2_HDR_SIZES:
        raise FormatError(f"LUKS2 metadata size {hdr_size} is not an allowed size")
    ks_size = m.config.keyslots_size
    if ks_size % 4096 or ks_size > limits.LUKS2_MAX_KEYSLOTS_SIZE:
        raise FormatError(f"LUKS2 config.keyslots_size {ks_size} is not 4 KiB-aligned or too big")
    online = [r for r in m.config.requirements if re.fullmatch(r"online-reencrypt(-v[0-9]+)?", r)]
    if len(online) > 1:
        raise FormatError("LUKS2 config.requirements: repeated re-encryption requirement")
    _validate_segments(m, hdr_size)
    lo, hi = 2 * hdr_size, 2 * hdr_size + ks_size
    areas: list[tuple[int, int, str]] = []
    for n, ks in m.keyslots.items():
        end = ks.area_offset + ks.area_size
        if ks.area_size == 0 or ks.area_offset < lo or end > hi or end >= 1 << 64:
            raise FormatError(
                f"LUKS2 keyslot {n} area [{ks.area_offset}, +{ks.area_size}) is outside "
                f"the keyslots area [{lo}, {hi})"
            )
        areas.append((ks.area_offset, end, f"keyslot {n}"))
    areas.sort()
    for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(areas):
        if start_b < end_a:
            raise FormatError(f"LUKS2 {name_a} area overlaps {name_b}")
    for n, dg in m.digests.items():
        for k in dg.keyslots:
            if k not in m.keyslots:
                raise FormatError(f"LUKS2 digest {n} names missing keyslot {k}")
        for s in dg.segments:
            if s not in m.segments:
                raise FormatError(f"LUKS2 digest {n} names missing segment {s}")
    for n, ks in m.keyslots.items():
        named = [d for d, dg in m.digests.items() if n in dg.keyslots]
        if ks.type == "luks2" and len(named) != 1:
            raise FormatError(
                f"LUKS2 keyslot {n} is named by {len(named)} digests, expected exactly 1"
            )
    reencrypt = [n for n, ks in m.keyslots.items() if ks.type == "reencrypt"]
    if len(reencrypt) > 1 or bool(reencrypt) != bool(online):
        raise FormatError(
            f"LUKS2 re-encryption: {len(reencrypt)} reencrypt keyslot(s) and "
            f"{'an' if online else 'no'} online-reencrypt requirement (expected one and one)"
        )
    for n, tk in m.tokens.items():
        for k in tk.keyslots:
            if k not in m.keyslots:
                raise FormatError(f"LUKS2 token {n} names missing keyslot {k}")


def _validate_segments(m: Metadata, hdr_size: int) -> None:
    """cryptsetup's segment rules: ids 0..n-1 without gaps, regular segments first and not
    overlapping, only the last one dynamic, every crypt segment under a digest, and the
    keyslots area ending before the first data (offset 0 = detached header)."""
    if not m.segments:
        raise FormatError("LUKS2 segments section is empty")
    ids = sorted(m.segments)
    if ids != list(range(len(ids))):
        raise FormatError(f"LUKS2 segments have a gap in their ids {ids}")
    regular = [n for n in ids if not m.segments[n].is_backup]
    if regular != ids[: len(regular)] or not regular:
        raise FormatError("LUKS2: a regular segment follows a backup segment, or none exists")
    spans = []
    for n in regular:
        seg = m.segments[n]
        if seg.size is None and n != regular[-1]:
            raise FormatError("LUKS2: only the last segment may have a dynamic size")
        spans.append((seg.offset, (1 << 64) if seg.size is None else seg.offset + seg.size, n))
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise FormatError(f"LUKS2 segment {a} overlaps segment {b}")
    first = min(m.segments[n].offset for n in regular)
    if first and first < 2 * hdr_size + m.config.keyslots_size:
        raise FormatError(
            f"LUKS2 data starts at {first}, inside the metadata and keyslots area "
            f"(ends at {2 * hdr_size + m.config.keyslots_size})"
        )
    covered = {s for dg in m.digests.values() for s in dg.segments}
    for n, seg in m.segments.items():
        if seg.type == "crypt" and n not in covered:
            raise FormatError(f"LUKS2 segment {n} has no digest")
