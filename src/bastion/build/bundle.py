"""Build a RAUC-compatible ``verity`` bundle (docs/updates.md, ADR 0026).

Steps, as ``rauc bundle`` takes them for the verity format:

1. stage the images (a root filesystem image, optionally a UKI) and ``manifest.raucm``
   *without* verity metadata (``[bundle] format=verity``) in a fresh directory;
2. ``mksquashfs DIR OUT -all-root -noappend -no-progress -no-xattrs`` (one processor,
   ``SOURCE_DATE_EPOCH``): squashfs pads to 4096 bytes, which RAUC requires. Data is
   stored uncompressed, without fragments, sparse blocks or duplicate detection
   (``-noD -no-fragments -no-sparse -no-duplicates``), so each image is one contiguous
   run of payload bytes, in file-name order after the 96-byte superblock (ADR 0030);
   a padding file :data:`ALIGN_FILE` (not in the manifest) is added when needed so the
   ``rootfs`` image starts on a 4096-byte payload block: a device streams it block by
   block and reuses blocks it already holds, found by their verity digests;
3. append the dm-verity tree (SHA-256, 4096-byte blocks, a random 32-byte salt, format
   1, no superblock) over the squashfs, computed by :mod:`bastion.formats.verity`;
4. sign the manifest *with* ``verity-hash``/``verity-salt``/``verity-size`` and the
   ``[meta.bastion-layout]`` group (``offset-<slotclass>=<payload byte offset>`` of each
   image) as inline CMS content (:func:`bastion.trust.bundle.sign_manifest`) and append
   it, then its size as 8 big-endian bytes. The manifest inside the squashfs has
   neither (RAUC reads only the signed one for verity bundles).

With ``golden`` (a golden-values statement signed by the product key, ADR 0037) the
statement is one more payload file, :data:`~bastion.formats.raucm.GOLDEN_FILE`, and the
signed manifest names it in ``[meta.bastion-golden]`` (file name, SHA-256, size, payload
offset; :class:`~bastion.formats.raucm.GoldenRef`). It is not an image: RAUC installs
none of it, bastion's server and CLI read it back (:func:`bastion.trust.bundle.bundle_golden`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509

from bastion.errors import ConfigError, FormatError
from bastion.formats import verity
from bastion.formats.bundle import trailer_bytes
from bastion.formats.raucm import (
    FORMAT_VERITY,
    GOLDEN_FILE,
    GOLDEN_GROUP,
    MANIFEST_NAME,
    GoldenRef,
    Manifest,
    ManifestImage,
    check_filename,
)
from bastion.io.runner import CommandRunner
from bastion.limits import BUNDLE_BLOCK_SIZE
from bastion.trust.bundle import sign_manifest
from bastion.trust.signer import Signer

_CHUNK = 1 << 20
SALT_SIZE = 32
#: the padding file that aligns the rootfs image (sorts before image and manifest names)
ALIGN_FILE = ".align"
#: the signed manifest group holding each image's payload offset
LAYOUT_GROUP = "bastion-layout"
#: the slot class whose image must start on a payload block
ALIGNED_SLOTCLASS = "rootfs"
_SQUASHFS_SUPERBLOCK = 96
_MKSQUASHFS_LAYOUT = ("-noD", "-no-fragments", "-no-sparse", "-no-duplicates")


@dataclass(frozen=True, slots=True)
class BundleImage:
    """An image to carry: its slot class, the file, and its name inside the bundle."""

    slotclass: str
    path: Path
    filename: str


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    """What :func:`build_bundle` wrote."""

    path: Path
    manifest: Manifest
    payload_size: int
    tree_size: int
    signature_size: int
    bundle_size: int


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _append_tree(out: Path, salt: bytes) -> tuple[bytes, int, int]:
    """Append the verity tree over ``out``; return (root hash, payload size, tree size)."""
    payload = out.stat().st_size
    if payload % BUNDLE_BLOCK_SIZE or payload <= BUNDLE_BLOCK_SIZE:
        raise FormatError(
            f"squashfs is {payload} bytes: RAUC needs a multiple of 4096 larger than 4096"
        )
    params = verity.VerityParams.for_data_size(payload, salt=salt)
    hasher = verity.VerityHasher(params)
    digests: list[bytes] = []
    with out.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digests.extend(hasher.digests(chunk, BUNDLE_BLOCK_SIZE))
    tree = verity.build_upper_levels(params, hasher.pack(digests))
    area = tree.hash_area
    with out.open("ab") as f:
        f.write(area)
    return tree.root_hash, payload, len(area)


def _mksquashfs(runner: CommandRunner, content: Path, out: Path, epoch: int) -> None:
    if out.exists():
        out.unlink()
    runner.run(
        [
            "mksquashfs",
            str(content),
            str(out),
            "-all-root",
            "-noappend",
            "-no-progress",
            "-no-xattrs",
            "-quiet",
            "-processors",
            "1",
            *_MKSQUASHFS_LAYOUT,
        ],
        env={"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"},
    )


def _image_offsets(
    squashfs: Path, content: Path, images: Sequence[BundleImage], pad: int, extra: Sequence[str]
) -> dict[str, int]:
    """Each image's (and each ``extra`` file's) byte offset in the squashfs: files lie in
    name order after the superblock; each offset is checked by reading the bytes back.
    Keyed by slot class for images, by file name for ``extra``."""
    names = sorted(
        [i.filename for i in images] + [MANIFEST_NAME, *extra] + ([ALIGN_FILE] if pad else [])
    )
    offsets: dict[str, int] = {}
    at = _SQUASHFS_SUPERBLOCK
    for name in names:
        offsets[name] = at
        at += (content / name).stat().st_size
    with squashfs.open("rb") as f:
        for filename in [i.filename for i in images] + list(extra):
            want, size = _sha256_file(content / filename)
            f.seek(offsets[filename])
            h = hashlib.sha256()
            left = size
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
            if left or h.hexdigest() != want:
                raise FormatError(
                    f"mksquashfs did not store {filename} contiguously at payload "
                    f"offset {offsets[filename]} (expected uncompressed file data)"
                )
    return {i.slotclass: offsets[i.filename] for i in images} | {n: offsets[n] for n in extra}


def build_bundle(
    out: Path,
    images: Sequence[BundleImage],
    *,
    compatible: str,
    version: str | None,
    signer: Signer,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
    description: str | None = None,
    build: str | None = None,
    epoch: int = 1,
    runner: CommandRunner | None = None,
    salt: bytes | None = None,
    now: dt.datetime | None = None,
    meta: Sequence[tuple[str, tuple[tuple[str, str], ...]]] = (),
    golden: bytes | None = None,
) -> BuiltBundle:
    """Write a signed verity bundle to ``out`` (replacing it) and return what it holds;
    ``golden``: the signed golden-values statement to carry (module docstring)."""
    if not images:
        raise ConfigError("a bundle needs at least one image")
    if golden is not None and any(i.filename == GOLDEN_FILE for i in images):
        raise ConfigError(f"an image may not be called {GOLDEN_FILE!r}: it is the golden file")
    extra = [GOLDEN_FILE] if golden is not None else []
    runner = runner or CommandRunner()
    salt = os.urandom(SALT_SIZE) if salt is None else salt
    if len(salt) != SALT_SIZE:
        raise ConfigError(f"the bundle verity salt must be {SALT_SIZE} bytes")
    entries: list[ManifestImage] = []
    for image in images:
        check_filename(image.filename)
        digest, size = _sha256_file(image.path)
        entries.append(ManifestImage(image.slotclass, image.filename, digest, size))
    manifest = Manifest(
        compatible=compatible,
        version=version,
        description=description,
        build=build,
        bundle_format=FORMAT_VERITY,
        images=tuple(entries),
        meta=tuple(meta),
    )
    for group in (LAYOUT_GROUP, GOLDEN_GROUP):
        if any(label == group for label, _ in manifest.meta):
            raise ConfigError(f"[meta.{group}] is written by the bundle builder")
    out = out.resolve()
    tmp_out = out.with_name(out.name + ".tmp")
    with tempfile.TemporaryDirectory(prefix="bastion-bundle-") as tmp:
        content = Path(tmp) / "content"
        content.mkdir()
        for image in images:
            shutil.copyfile(image.path, content / image.filename)
            os.utime(content / image.filename, (epoch, epoch))
        (content / MANIFEST_NAME).write_bytes(manifest.to_bytes())
        os.utime(content / MANIFEST_NAME, (epoch, epoch))
        if golden is not None:
            (content / GOLDEN_FILE).write_bytes(golden)
            os.utime(content / GOLDEN_FILE, (epoch, epoch))
        os.utime(content, (epoch, epoch))
        _mksquashfs(runner, content, tmp_out, epoch)
        pad = 0
        offsets = _image_offsets(tmp_out, content, images, pad, extra)
        aligned = offsets.get(ALIGNED_SLOTCLASS)
        if aligned is not None and aligned % BUNDLE_BLOCK_SIZE:
            pad = BUNDLE_BLOCK_SIZE - aligned % BUNDLE_BLOCK_SIZE
            (content / ALIGN_FILE).write_bytes(bytes(pad))
            os.utime(content / ALIGN_FILE, (epoch, epoch))
            os.utime(content, (epoch, epoch))
            _mksquashfs(runner, content, tmp_out, epoch)
            offsets = _image_offsets(tmp_out, content, images, pad, extra)
            if offsets[ALIGNED_SLOTCLASS] % BUNDLE_BLOCK_SIZE:
                raise FormatError(
                    f"the {ALIGNED_SLOTCLASS} image sorts before {ALIGN_FILE!r}: "
                    "give it a file name that sorts after it"
                )
    try:
        root_hash, payload, tree_size = _append_tree(tmp_out, salt)
        layout = tuple(
            (f"offset-{cls}", str(off)) for cls, off in offsets.items() if cls not in extra
        )
        groups = [(LAYOUT_GROUP, layout)]
        if golden is not None:
            ref = GoldenRef(
                GOLDEN_FILE, hashlib.sha256(golden).hexdigest(), len(golden), offsets[GOLDEN_FILE]
            )
            groups.append(ref.meta())
        signed = replace(manifest, meta=(*manifest.meta, *groups))
        signed = signed.with_verity(root_hash, salt, tree_size)
        sig = sign_manifest(signed.to_bytes(), signer, certificate, chain, now=now)
        with tmp_out.open("ab") as f:
            f.write(sig)
            f.write(trailer_bytes(len(sig)))
        tmp_out.replace(out)
    finally:
        if tmp_out.exists():
            tmp_out.unlink()
    return BuiltBundle(out, signed, payload, tree_size, len(sig), out.stat().st_size)
