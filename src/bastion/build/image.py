"""The inputs of an image build and the checks on them, before anything is built.

``ImageSpec`` is what ``bastion image build`` was given (root tree, kernel, initrd,
command line, versions, sizes); ``check_cmdline`` and ``check_sizes`` refuse what the
image cannot have, naming the partition or parameter; ``_root_seed`` derives the root's
identity from the tree (so the same inputs give the same bytes) and ``_build_root_fs``
makes the root filesystem with a UUID derived from it. build/efi_image.py builds the
disk (ESP with signed systemd-boot and UKIs, verity roots, data) from these.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from bastion.build.fs import FsType, build_filesystem
from bastion.errors import ConfigError
from bastion.formats import gpt
from bastion.formats.image import (
    PART_DATA,
    RESERVED_CMDLINE,
    RESERVED_CMDLINE_PREFIXES,
    VERITY_BLOCK,
    root_part,
)
from bastion.io.runner import CommandRunner
from bastion.limits import MiB
from bastion.storage.luks2_volume import DEFAULT_DATA_OFFSET
from bastion.trust.envelope import sign_envelope
from bastion.trust.signer import Signer

DEFAULT_DATA_SIZE = 64 * MiB
#: the smallest data partition: LUKS2 headers and keyslot area, plus 1 MiB of data
DATA_MIN_SIZE = DEFAULT_DATA_OFFSET + MiB


@dataclass(frozen=True)
class ImageSpec:
    """Inputs of one image build."""

    rootfs: Path
    kernel: bytes
    version: str
    security_version: int
    initrd: bytes = b""
    cmdline: str = ""
    fs: FsType = FsType.EXT4
    data_size: int = DEFAULT_DATA_SIZE
    root_size: int | None = None  # slot capacity; default: the root filesystem, MiB-aligned
    epoch: int = 0
    os_release: bytes = field(default=b"")


def _tree_digest(root: Path) -> bytes:
    """A digest of a tree's names, modes, link targets and contents (the build seed)."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files + dirs):
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix().encode()
            st = path.lstat()
            h.update(rel + b"\0" + str(st.st_mode).encode() + b"\0")
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(MiB), b""):
                        h.update(chunk)
    return h.digest()


def sign_statement(payload_type: str, statement: bytes, signer: Signer) -> bytes:
    """A one-signature envelope over a statement, serialised."""
    return sign_envelope(payload_type, statement, [signer]).to_bytes()


def _root_seed(spec: ImageSpec) -> bytes:
    """The root's identity: derived from the root tree, filesystem type and epoch only."""
    return hashlib.sha256(_tree_digest(spec.rootfs) + f":{spec.fs}:{spec.epoch}".encode()).digest()


def _build_root_fs(
    spec: ImageSpec, out: Path, root_seed: bytes, runner: CommandRunner | None
) -> int:
    """Build the root filesystem image with its UUID derived from ``root_seed``; its size."""
    return build_filesystem(
        spec.rootfs,
        out,
        spec.fs,
        fs_uuid=gpt.derived_uuid("rootfs", root_seed),
        epoch=spec.epoch,
        runner=runner,
    )


def check_cmdline(cmdline: str) -> None:
    """Refuse a user command line that sets a parameter the chain sets or reads itself."""
    if not cmdline.isascii() or not all(c.isprintable() for c in cmdline):
        raise ConfigError("kernel command line: only printable ASCII is allowed")
    for word in cmdline.split():
        key = word.lstrip('"').partition("=")[0].rstrip('"')
        why = RESERVED_CMDLINE.get(key)
        if why is None:
            why = next((w for p, w in RESERVED_CMDLINE_PREFIXES.items() if key.startswith(p)), None)
        if why is not None:
            raise ConfigError(f"kernel command line: {key}= is reserved ({why}); remove it")


def _tree_bytes(root: Path) -> int:
    """The bytes of the regular files under ``root`` (a lower bound of the filesystem)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            st = Path(folder, name).lstat()
            if not os.path.islink(Path(folder, name)):
                total += st.st_size
    return total


def check_sizes(spec: ImageSpec) -> None:
    """Refuse partition sizes the image cannot have, before anything is built or written."""
    if spec.data_size % gpt.SECTOR:
        raise ConfigError(
            f"partition {PART_DATA}: size {spec.data_size} bytes is not a multiple of the "
            f"{gpt.SECTOR}-byte sector"
        )
    if spec.data_size < DATA_MIN_SIZE:
        raise ConfigError(
            f"partition {PART_DATA}: size {spec.data_size} bytes is smaller than the "
            f"{DATA_MIN_SIZE} bytes its LUKS2 volume needs (16 MiB of headers + 1 MiB)"
        )
    if spec.root_size is not None:
        if spec.root_size <= 0 or spec.root_size % VERITY_BLOCK:
            raise ConfigError(
                f"partition {root_part('a')}: slot size {spec.root_size} bytes is not a "
                f"positive multiple of the {VERITY_BLOCK}-byte verity block"
            )
        if not spec.rootfs.is_dir():
            raise ConfigError(f"root tree {spec.rootfs}: not a folder")
        content = _tree_bytes(spec.rootfs)
        if content > spec.root_size:
            raise ConfigError(
                f"partition {root_part('a')}: the root tree {spec.rootfs} holds {content} "
                f"bytes, more than the slot size {spec.root_size} bytes"
            )
