"""What a signed bundle manifest says about a release, as the device installs it. Pure.

A bastion bundle's *signed* manifest (formats/raucm.py) carries, besides RAUC's
``[update]``/``[bundle]``/``[image.*]`` groups:

* ``[meta.bastion]`` (written by ``release build``, read by trust/tuf.py too):
  ``svn`` (security version; the device takes 0..64, its fuse bits), ``hardware``
  (comma-separated hardware ids the release runs on), optionally ``product`` (else
  RAUC's ``compatible``), ``min-base-version`` (the oldest running version it may
  update from) and ``golden-pcrs`` (for attestation, not read here);
* ``[meta.bastion-health]``: ``spec``, a JSON health specification
  (device/update/health.py), optional;
* ``[meta.bastion-layout]``: ``offset-<slotclass>=N``, the payload byte offset of each
  image (written by build/bundle.py; the ``rootfs`` image starts on a 4096-byte block).

:func:`release_of` reads these into a
:class:`Release` and refuses anything missing or out of range (FormatError), so the
installer decides on typed values only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bastion.errors import FormatError, LimitError
from bastion.formats.raucm import Manifest
from bastion.limits import BUNDLE_BLOCK_SIZE, UPDATE_IMAGE_MAX_SIZE, UPDATE_VERSION_MAX_PARTS

META_GROUP = "bastion"
LAYOUT_GROUP = "bastion-layout"
HEALTH_GROUP = "bastion-health"
_META_KEYS = {"product", "svn", "hardware", "min-base-version", "golden-pcrs"}
ROOTFS = "rootfs"
VERITY = "verity"
EFI = "efi"
#: the fuse bank's bits: the highest security version a release can carry
MAX_SVN = 64


@dataclass(frozen=True, slots=True)
class ImageRange:
    """One image of the payload: its slot class, payload offset, size and SHA-256."""

    slotclass: str
    offset: int
    size: int
    sha256: str

    @property
    def aligned(self) -> bool:
        """True when the image starts on a payload block (it can be reused block-wise)."""
        return self.offset % BUNDLE_BLOCK_SIZE == 0

    @property
    def first_block(self) -> int:
        return self.offset // BUNDLE_BLOCK_SIZE

    @property
    def end_block(self) -> int:
        """One past the last payload block the image touches."""
        return -(-(self.offset + self.size) // BUNDLE_BLOCK_SIZE)


@dataclass(frozen=True, slots=True)
class Release:
    """The release a verified bundle carries."""

    product: str
    version: str
    svn: int
    hardware: tuple[str, ...]
    min_base_version: str | None
    health: str | None
    images: Mapping[str, ImageRange]
    verity_hash: str

    def image(self, slotclass: str) -> ImageRange | None:
        return self.images.get(slotclass)


def _meta(manifest: Manifest, label: str) -> dict[str, str]:
    for name, pairs in manifest.meta:
        if name == label:
            return dict(pairs)
    return {}


def _uint(what: str, text: str, limit: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise FormatError(f"bundle manifest {what} {text!r} is not an unsigned integer")
    value = int(text)
    if value > limit:
        raise LimitError(f"bundle manifest {what} {value} is over {limit}")
    return value


def release_of(manifest: Manifest, payload_size: int) -> Release:
    """The release a signed manifest describes (FormatError if it is not a bastion one)."""
    meta = _meta(manifest, META_GROUP)
    layout = _meta(manifest, LAYOUT_GROUP)
    if not meta or "svn" not in meta:
        raise FormatError("bundle manifest has no [meta.bastion] svn: not a bastion release")
    if manifest.version is None:
        raise FormatError("bundle manifest has no [update] version")
    parse_version(manifest.version)
    svn = _uint("[meta.bastion] svn", meta["svn"], MAX_SVN)
    hardware = tuple(h for h in meta.get("hardware", "").split(",") if h)
    if not hardware:
        raise FormatError("bundle manifest [meta.bastion] names no hardware")
    base = meta.get("min-base-version")
    if base is not None:
        parse_version(base)
    unknown = sorted(set(meta) - _META_KEYS)
    if unknown:
        raise FormatError(f"bundle manifest [meta.bastion] has unknown key(s) {unknown}")
    health = _meta(manifest, HEALTH_GROUP)
    if sorted(health) not in ([], ["spec"]):
        raise FormatError(f"bundle manifest [meta.{HEALTH_GROUP}] takes one key, spec")
    images: dict[str, ImageRange] = {}
    for image in manifest.images:
        if image.variant is not None:
            raise FormatError(f"bundle image {image.group}: variants are not installed")
        key = f"offset-{image.slotclass}"
        if key not in layout:
            raise FormatError(f"bundle manifest [meta.{LAYOUT_GROUP}] has no {key}")
        if image.size > UPDATE_IMAGE_MAX_SIZE:
            raise LimitError(f"bundle image {image.group} is {image.size} bytes")
        offset = _uint(f"[meta.{LAYOUT_GROUP}] {key}", layout[key], payload_size)
        if offset + image.size > payload_size:
            raise FormatError(
                f"bundle image {image.group} [{offset}, +{image.size}) runs past the "
                f"{payload_size}-byte payload"
            )
        images[image.slotclass] = ImageRange(image.slotclass, offset, image.size, image.sha256)
    if ROOTFS not in images or EFI not in images:
        raise FormatError("a bastion release carries a rootfs image and an efi image (UKI)")
    if images[ROOTFS].size % BUNDLE_BLOCK_SIZE or not images[ROOTFS].size:
        raise FormatError(
            f"bundle rootfs image is {images[ROOTFS].size} bytes, not a positive multiple "
            f"of {BUNDLE_BLOCK_SIZE} (a dm-verity data device)"
        )
    if not images[ROOTFS].aligned:
        raise FormatError(
            f"bundle rootfs image starts at payload byte {images[ROOTFS].offset}, not on a "
            f"{BUNDLE_BLOCK_SIZE}-byte block (build it with bastion release build)"
        )
    assert manifest.verity_hash is not None
    product = meta.get("product", manifest.compatible)
    return Release(
        product=product,
        version=manifest.version,
        svn=svn,
        hardware=hardware,
        min_base_version=base,
        health=health.get("spec"),
        images=images,
        verity_hash=manifest.verity_hash,
    )


def parse_version(text: str) -> tuple[int, ...]:
    """A dotted numeric version (``2026.12.1``) as a tuple for comparison."""
    parts = text.split(".")
    if len(parts) > UPDATE_VERSION_MAX_PARTS or not all(
        p.isascii() and p.isdigit() and len(p) <= 9 for p in parts
    ):
        raise FormatError(f"version {text!r} is not dotted decimal numbers")
    return tuple(int(p) for p in parts)
