"""Build a RAUC-compatible ``verity`` bundle (docs/updates.md, ADR 0026).

Steps, as ``rauc bundle`` takes them for the verity format:

1. stage the images (a root filesystem image, optionally a UKI) and ``manifest.raucm``
   *without* verity metadata (``[bundle] format=verity``) in a fresh directory;
2. ``mksquashfs DIR OUT -all-root -noappend -no-progress -no-xattrs`` (one processor,
   ``SOURCE_DATE_EPOCH``): squashfs pads to 4096 bytes, which RAUC requires;
3. append the dm-verity tree (SHA-256, 4096-byte blocks, a random 32-byte salt, format
   1, no superblock) over the squashfs, computed by :mod:`bastion.formats.verity`;
4. sign the manifest *with* ``verity-hash``/``verity-salt``/``verity-size`` as inline
   CMS content (:func:`bastion.trust.bundle.sign_manifest`) and append it, then its
   size as 8 big-endian bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from bastion.errors import ConfigError, FormatError
from bastion.formats import verity
from bastion.formats.bundle import trailer_bytes
from bastion.formats.raucm import (
    FORMAT_VERITY,
    MANIFEST_NAME,
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
) -> BuiltBundle:
    """Write a signed verity bundle to ``out`` (replacing it) and return what it holds."""
    if not images:
        raise ConfigError("a bundle needs at least one image")
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
    )
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
        os.utime(content, (epoch, epoch))
        if tmp_out.exists():
            tmp_out.unlink()
        runner.run(
            [
                "mksquashfs",
                str(content),
                str(tmp_out),
                "-all-root",
                "-noappend",
                "-no-progress",
                "-no-xattrs",
                "-quiet",
                "-processors",
                "1",
            ],
            env={"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"},
        )
    try:
        root_hash, payload, tree_size = _append_tree(tmp_out, salt)
        signed = manifest.with_verity(root_hash, salt, tree_size)
        sig = sign_manifest(signed.to_bytes(), signer, certificate, chain, now=now)
        with tmp_out.open("ab") as f:
            f.write(sig)
            f.write(trailer_bytes(len(sig)))
        tmp_out.replace(out)
    finally:
        if tmp_out.exists():
            tmp_out.unlink()
    return BuiltBundle(out, signed, payload, tree_size, len(sig), out.stat().st_size)
