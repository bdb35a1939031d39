"""RAUC bundle manifests (``manifest.raucm``): a strict reader and the writer RAUC matches.

A manifest is a GLib key file. What RAUC 1.8 (``src/manifest.c``) reads and writes:

* ``[update]``: ``compatible`` (required), ``version``, ``description``, ``build``.
* ``[bundle]``: ``format`` (``plain`` when absent, ``verity``, ``crypt``); for verity
  bundles the *signed* (inline) manifest also has ``verity-hash`` and ``verity-salt``
  (64 lowercase hex digits each, SHA-256 / 32 bytes) and ``verity-size`` (bytes of the
  hash tree, a positive multiple of 4096); the manifest *inside* the squashfs has none.
* ``[image.<slotclass>]`` (optionally ``.<variant>``): ``sha256``, ``size``, ``filename``.
* ``[meta.<label>]``: free key/value pairs that RAUC 1.8 reads past; kept here.
  bastion's own: ``[meta.bastion-golden]`` names the signed golden-values statement a
  bundle carries in its payload (:class:`GoldenRef`, ADR 0037).
* ``[handler]`` and ``[hooks]``, and the ``hooks``/``adaptive`` image keys, run or steer
  code on the device: bastion refuses them (fail closed) rather than carry them unread.

Like RAUC, a key or group it does not know is an error. Unlike GLib, this reader also
refuses what GLib would quietly resolve: duplicate groups or keys, whitespace around
keys or values, backslash escapes, localised keys, control characters. The writer emits
exactly what ``g_key_file_to_data`` writes for RAUC's ``prepare_manifest``: groups in
order update, bundle, images, meta; ``key=value`` lines; one blank line between groups.

Pure: text in, frozen objects out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from bastion.errors import FormatError, LimitError
from bastion.limits import (
    ATTEST_GOLDEN_MAX_SIZE,
    BUNDLE_BLOCK_SIZE,
    BUNDLE_MANIFEST_MAX_IMAGES,
    BUNDLE_MANIFEST_MAX_SIZE,
    BUNDLE_MANIFEST_MAX_VALUE,
)

FORMAT_PLAIN = "plain"
FORMAT_VERITY = "verity"
FORMAT_CRYPT = "crypt"
MANIFEST_NAME = "manifest.raucm"
#: the signed manifest group naming the bundle's golden-values statement (ADR 0037)
GOLDEN_GROUP = "bastion-golden"
#: the statement's file name in the bundle payload (not an image: RAUC installs none)
GOLDEN_FILE = "golden.dsse"
_GOLDEN_KEYS = ("filename", "sha256", "size", "offset")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_UPDATE_KEYS = ("compatible", "version", "description", "build")
_IMAGE_KEYS = ("sha256", "size", "filename")
_REFUSED_GROUPS = {"handler": "handlers", "hooks": "hooks"}
_REFUSED_IMAGE_KEYS = {"hooks": "slot hooks", "adaptive": "adaptive updates"}


@dataclass(frozen=True, slots=True)
class ManifestImage:
    """One ``[image.<slotclass>[.<variant>]]`` section."""

    slotclass: str
    filename: str
    sha256: str
    size: int
    variant: str | None = None

    def __post_init__(self) -> None:
        _check_name("image slot class", self.slotclass)
        if self.variant is not None:
            _check_name("image variant", self.variant)
        check_filename(self.filename)
        if not _HEX64.fullmatch(self.sha256):
            raise FormatError(
                f"manifest image {self.group!r}: sha256 must be 64 lowercase hex digits"
            )
        if self.size < 0:
            raise FormatError(f"manifest image {self.group!r}: size must not be negative")

    @property
    def group(self) -> str:
        """The section name: ``image.<slotclass>`` or ``image.<slotclass>.<variant>``."""
        base = f"image.{self.slotclass}"
        return base if self.variant is None else f"{base}.{self.variant}"


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest; ``verity_*`` are set only in a signed verity manifest."""

    compatible: str
    version: str | None = None
    description: str | None = None
    build: str | None = None
    bundle_format: str = FORMAT_PLAIN
    verity_hash: str | None = None
    verity_salt: str | None = None
    verity_size: int | None = None
    images: tuple[ManifestImage, ...] = ()
    meta: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.compatible:
            raise FormatError("manifest [update] compatible must not be empty")
        for name in ("compatible", "version", "description", "build"):
            value = getattr(self, name)
            if value is not None:
                _check_value(f"[update] {name}", value)
        if self.bundle_format not in (FORMAT_PLAIN, FORMAT_VERITY):
            raise FormatError(
                f"manifest bundle format {self.bundle_format!r} is not supported "
                "(expected plain or verity)"
            )
        verity = (self.verity_hash, self.verity_salt, self.verity_size)
        if self.bundle_format == FORMAT_PLAIN and any(v is not None for v in verity):
            raise FormatError("manifest of a plain bundle carries verity metadata")
        if any(v is not None for v in verity) and None in verity:
            raise FormatError("manifest verity metadata is incomplete (hash, salt and size)")
        for what, value in (("verity-hash", self.verity_hash), ("verity-salt", self.verity_salt)):
            if value is not None and not _HEX64.fullmatch(value):
                raise FormatError(f"manifest {what} must be 64 lowercase hex digits")
        if self.verity_size is not None and (
            self.verity_size <= 0 or self.verity_size % BUNDLE_BLOCK_SIZE
        ):
            raise FormatError(
                f"manifest verity-size {self.verity_size} is not a positive multiple of "
                f"{BUNDLE_BLOCK_SIZE}"
            )
        if len(self.images) > BUNDLE_MANIFEST_MAX_IMAGES:
            raise LimitError(
                f"manifest has {len(self.images)} images (limit {BUNDLE_MANIFEST_MAX_IMAGES})"
            )
        groups = [i.group for i in self.images] + [f"meta.{label}" for label, _ in self.meta]
        if len(set(groups)) != len(groups):
            raise FormatError("manifest names one image or meta section twice")
        files = [i.filename for i in self.images]
        if len(set(files)) != len(files):
            raise FormatError("manifest names one image file twice")
        for label, pairs in self.meta:
            _check_name("meta label", label)
            keys = [k for k, _ in pairs]
            if len(set(keys)) != len(keys):
                raise FormatError(f"manifest [meta.{label}] repeats a key")
            for key, value in pairs:
                if not _KEY.fullmatch(key):
                    raise FormatError(f"manifest [meta.{label}] key {key!r} is invalid")
                _check_value(f"[meta.{label}] {key}", value)

    @property
    def has_verity(self) -> bool:
        """True when the verity root hash, salt and size are present."""
        return self.verity_hash is not None

    def without_verity(self) -> Manifest:
        """The manifest as stored inside the squashfs (no verity metadata)."""
        return replace(self, verity_hash=None, verity_salt=None, verity_size=None)

    def with_verity(self, root_hash: bytes, salt: bytes, size: int) -> Manifest:
        """The manifest to sign once the hash tree is known."""
        return replace(
            self,
            bundle_format=FORMAT_VERITY,
            verity_hash=root_hash.hex(),
            verity_salt=salt.hex(),
            verity_size=size,
        )

    def to_text(self) -> str:
        """The key file exactly as RAUC (GLib) writes it."""
        groups: list[list[tuple[str, str]]] = []
        names: list[str] = []
        update = [(k, getattr(self, k)) for k in _UPDATE_KEYS if getattr(self, k) is not None]
        names.append("update")
        groups.append(update)
        bundle = [("format", self.bundle_format)]
        if self.has_verity:
            bundle += [
                ("verity-hash", str(self.verity_hash)),
                ("verity-salt", str(self.verity_salt)),
                ("verity-size", str(self.verity_size)),
            ]
        names.append("bundle")
        groups.append(bundle)
        for image in self.images:
            names.append(image.group)
            groups.append(
                [("sha256", image.sha256), ("size", str(image.size)), ("filename", image.filename)]
            )
        for label, pairs in self.meta:
            names.append(f"meta.{label}")
            groups.append(list(pairs))
        blocks = [
            f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in pairs)
            for name, pairs in zip(names, groups, strict=True)
        ]
        return "\n".join(blocks)

    def to_bytes(self) -> bytes:
        """``to_text`` as UTF-8."""
        return self.to_text().encode("utf-8")


@dataclass(frozen=True, slots=True)
class GoldenRef:
    """``[meta.bastion-golden]``: the golden statement's file, SHA-256, size and byte
    offset in the payload (the verity-protected squashfs)."""

    filename: str
    sha256: str
    size: int
    offset: int

    def __post_init__(self) -> None:
        check_filename(self.filename)
        if not _HEX64.fullmatch(self.sha256):
            raise FormatError(f"manifest [meta.{GOLDEN_GROUP}] sha256 must be 64 hex digits")
        if not 0 < self.size <= ATTEST_GOLDEN_MAX_SIZE:
            raise LimitError(
                f"manifest [meta.{GOLDEN_GROUP}] size {self.size} is not "
                f"1..{ATTEST_GOLDEN_MAX_SIZE}"
            )
        if self.offset < 0:
            raise FormatError(f"manifest [meta.{GOLDEN_GROUP}] offset must not be negative")

    def meta(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The manifest group naming this statement."""
        return (
            GOLDEN_GROUP,
            (
                ("filename", self.filename),
                ("sha256", self.sha256),
                ("size", str(self.size)),
                ("offset", str(self.offset)),
            ),
        )


def golden_ref(manifest: Manifest) -> GoldenRef | None:
    """The golden statement a manifest names (None when it names none); FormatError when
    ``[meta.bastion-golden]`` lacks a key, has an unknown one or a bad value."""
    found = [pairs for label, pairs in manifest.meta if label == GOLDEN_GROUP]
    if not found:
        return None
    keys = dict(found[0])
    group = f"meta.{GOLDEN_GROUP}"
    _take(keys, group, _GOLDEN_KEYS)
    for key in _GOLDEN_KEYS:
        if key not in keys:
            raise FormatError(f"manifest [{group}] has no {key}")
    return GoldenRef(
        filename=keys["filename"],
        sha256=keys["sha256"],
        size=_uint(group, "size", keys["size"]),
        offset=_uint(group, "offset", keys["offset"]),
    )


def check_filename(name: str) -> str:
    """An image file name: one path component, no dot-only names, printable."""
    if not name or "/" in name or name in (".", "..") or name == MANIFEST_NAME:
        raise FormatError(f"manifest image filename {name!r} is not a plain file name")
    _check_value("image filename", name)
    return name


def _check_name(what: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise FormatError(f"manifest {what} {name!r} is invalid")


def _check_value(what: str, value: str) -> None:
    if len(value) > BUNDLE_MANIFEST_MAX_VALUE:
        raise LimitError(
            f"manifest {what} is {len(value)} characters (limit {BUNDLE_MANIFEST_MAX_VALUE})"
        )
    if (
        value != value.strip()
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        raise FormatError(
            f"manifest {what} has surrounding blanks, a backslash or a control character"
        )


def _read_groups(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    groups: list[tuple[str, list[tuple[str, str]]]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.split("\n"), start=1):
        if line == "" or line.startswith("#"):
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise FormatError(f"manifest line {number}: malformed group header")
            name = line[1:-1]
            if name in seen:
                raise FormatError(f"manifest line {number}: group [{name}] appears twice")
            seen.add(name)
            groups.append((name, []))
            continue
        if not groups:
            raise FormatError(f"manifest line {number}: a key before the first group")
        key, sep, value = line.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise FormatError(f"manifest line {number}: expected key=value")
        pairs = groups[-1][1]
        if any(k == key for k, _ in pairs):
            raise FormatError(f"manifest line {number}: key {key!r} appears twice")
        _check_value(f"line {number}", value)
        pairs.append((key, value))
    return groups


def _take(pairs: dict[str, str], group: str, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(pairs) - set(allowed))
    if extra:
        raise FormatError(f"manifest [{group}] has unknown key(s): {', '.join(extra)}")


def _uint(group: str, key: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise FormatError(f"manifest [{group}] {key} {value!r} is not an unsigned integer")
    return int(value)


def parse_manifest(data: bytes) -> Manifest:
    """Parse and check a manifest; FormatError / LimitError on anything RAUC or bastion refuses."""
    if len(data) > BUNDLE_MANIFEST_MAX_SIZE:
        raise LimitError(f"manifest is {len(data)} bytes (limit {BUNDLE_MANIFEST_MAX_SIZE})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"manifest is not UTF-8: {exc}") from exc
    if "\r" in text or "\x00" in text:
        raise FormatError("manifest has a carriage return or NUL byte")
    groups = _read_groups(text)
    by_name = {name: dict(pairs) for name, pairs in groups}
    if "update" not in by_name or "compatible" not in by_name["update"]:
        raise FormatError("manifest has no [update] compatible")
    update = by_name["update"]
    _take(update, "update", _UPDATE_KEYS)
    bundle = by_name.get("bundle", {})
    fmt = bundle.get("format", FORMAT_PLAIN)
    if fmt not in (FORMAT_PLAIN, FORMAT_VERITY):
        raise FormatError(f"manifest [bundle] format {fmt!r} is not supported by bastion")
    _take(bundle, "bundle", ("format", "verity-hash", "verity-salt", "verity-size"))
    size = bundle.get("verity-size")
    images: list[ManifestImage] = []
    meta: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for name, pairs in groups:
        if name in ("update", "bundle"):
            continue
        if name in _REFUSED_GROUPS:
            raise FormatError(
                f"manifest [{name}]: bastion does not run bundle {_REFUSED_GROUPS[name]}"
            )
        if name.startswith("meta."):
            meta.append((name[5:], tuple(pairs)))
            continue
        if not name.startswith("image."):
            raise FormatError(f"manifest has an unknown group [{name}]")
        keys = dict(pairs)
        for key, what in _REFUSED_IMAGE_KEYS.items():
            if key in keys:
                raise FormatError(f"manifest [{name}] {key}: bastion does not support {what}")
        _take(keys, name, _IMAGE_KEYS)
        for key in _IMAGE_KEYS:
            if key not in keys:
                raise FormatError(f"manifest [{name}] has no {key}")
        slotclass, dot, variant = name[6:].partition(".")
        if dot and not variant:
            raise FormatError(f"manifest group [{name}] has an empty variant")
        images.append(
            ManifestImage(
                slotclass=slotclass,
                variant=variant or None,
                filename=keys["filename"],
                sha256=keys["sha256"],
                size=_uint(name, "size", keys["size"]),
            )
        )
    return Manifest(
        compatible=update["compatible"],
        version=update.get("version"),
        description=update.get("description"),
        build=update.get("build"),
        bundle_format=fmt,
        verity_hash=bundle.get("verity-hash"),
        verity_salt=bundle.get("verity-salt"),
        verity_size=None if size is None else _uint("bundle", "verity-size", size),
        images=tuple(images),
        meta=tuple(meta),
    )
