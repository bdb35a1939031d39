"""Reproducible read-only root filesystem images through mkfs.ext4 / mksquashfs / mkfs.erofs.

Same tree in, same bytes out. The tree is first copied to a staging folder whose every
entry gets the same timestamp (``epoch``); then the tool runs with fixed identity:

* ext4 (e2fsprogs, on every Debian/Ubuntu): ``mkfs.ext4 -d`` without a journal, a fixed
  ``-U`` UUID and ``-E hash_seed=``, ``E2FSPROGS_FAKE_TIME`` for the superblock times, a
  size computed from the tree, then every inode's ctime reset with ``debugfs`` (mkfs
  copies the staging copy's ctime, which is the wall clock); the epoch is at least 1
  because e2fsprogs treats a time of 0 as unset;
* squashfs: ``mksquashfs -noappend -all-root`` with ``SOURCE_DATE_EPOCH``;
* erofs: ``mkfs.erofs --all-root -T epoch -U uuid``.

Every call goes through :class:`bastion.io.runner.CommandRunner`. The image is padded to a
multiple of 4096 bytes so dm-verity can cover it block by block.
"""

from __future__ import annotations

import enum
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from bastion.errors import ConfigError, FormatError
from bastion.io.runner import CommandRunner, find_tool

BLOCK = 4096


class FsType(enum.StrEnum):
    """Root filesystem types bastion builds."""

    EXT4 = "ext4"
    SQUASHFS = "squashfs"
    EROFS = "erofs"

    @property
    def tool(self) -> str:
        return {"ext4": "mkfs.ext4", "squashfs": "mksquashfs", "erofs": "mkfs.erofs"}[self.value]


def available(fs: FsType) -> bool:
    """Whether the tool for ``fs`` is installed."""
    return find_tool(fs.tool) is not None


def _stage(src: Path, dest: Path, epoch: int) -> int:
    """Copy ``src`` into ``dest`` with every timestamp set to ``epoch``; returns bytes used."""
    if not src.is_dir():
        raise ConfigError(f"rootfs {src} is not a folder")
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    used = 0
    for root, dirs, files in os.walk(dest, topdown=False):
        for name in files + dirs:
            path = os.path.join(root, name)
            st = os.lstat(path)
            used += (st.st_size + BLOCK - 1) // BLOCK * BLOCK + 256
            os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.utime(dest, (epoch, epoch))
    return used


def _fix_ext4_ctimes(
    staged: Path, image: Path, epoch: int, runner: CommandRunner, env: dict[str, str]
) -> None:
    """Set every inode's ctime to ``epoch``: mkfs.ext4 -d copies the staging copy's ctime,
    which is the wall clock (e2fsprogs 1.47.0 has no SOURCE_DATE_EPOCH support)."""
    lines = []
    for root, dirs, files in os.walk(staged):
        for name in sorted(dirs + files):
            rel = "/" + os.path.relpath(os.path.join(root, name), staged)
            if any(c in rel for c in '"\n\\'):
                raise ConfigError(f"rootfs path {rel!r} has a character debugfs cannot quote")
            lines.append(f'sif "{rel}" ctime @{epoch}')
    if not lines:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as cmds:
        cmds.write("\n".join(lines) + "\n")
    try:
        runner.run(["debugfs", "-w", "-f", cmds.name, str(image)], env=env)
    finally:
        os.unlink(cmds.name)


def ext4_size(used: int) -> int:
    """Image size for a tree occupying ``used`` bytes: 30% headroom + 2 MiB, MiB-aligned."""
    size = used * 13 // 10 + 2 * 1024 * 1024
    mib = 1024 * 1024
    return max(4 * mib, (size + mib - 1) // mib * mib)


def build_filesystem(
    src: Path,
    out: Path,
    fs: FsType,
    *,
    fs_uuid: uuid.UUID,
    epoch: int = 0,
    runner: CommandRunner | None = None,
) -> int:
    """Build ``out`` from the tree ``src``; returns the image size (a multiple of 4096)."""
    runner = runner or CommandRunner()
    # e2fsprogs treats a time of 0 as unset (E2FSPROGS_FAKE_TIME and inode times alike)
    # and then lets the wall clock leak in, so the epoch is at least 1
    epoch = max(epoch, 1)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "E2FSPROGS_FAKE_TIME": str(epoch), "LC_ALL": "C"}
    out = out.resolve()
    if out.exists():
        out.unlink()
    with tempfile.TemporaryDirectory(prefix="bastion-rootfs-") as tmp:
        staged = Path(tmp) / "root"
        used = _stage(src, staged, epoch)
        if fs is FsType.EXT4:
            size_kib = ext4_size(used) // 1024
            runner.run(
                [
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-b",
                    str(BLOCK),
                    "-O",
                    "^has_journal,^metadata_csum_seed",
                    "-U",
                    str(fs_uuid),
                    "-E",
                    f"root_owner=0:0,hash_seed={fs_uuid},lazy_itable_init=0",
                    "-L",
                    "root",
                    "-d",
                    str(staged),
                    str(out),
                    f"{size_kib}k",
                ],
                env=env,
            )
            _fix_ext4_ctimes(staged, out, epoch, runner, env)
        elif fs is FsType.SQUASHFS:
            runner.run(
                [
                    "mksquashfs",
                    str(staged),
                    str(out),
                    "-noappend",
                    "-all-root",
                    "-no-progress",
                    "-quiet",
                    "-processors",
                    "1",
                ],
                env=env,
            )
        elif fs is FsType.EROFS:
            runner.run(
                [
                    "mkfs.erofs",
                    "--all-root",
                    "-T",
                    str(epoch),
                    "-U",
                    str(fs_uuid),
                    str(out),
                    str(staged),
                ],
                env=env,
            )
        else:  # pragma: no cover - exhaustive enum
            raise ConfigError(f"unknown filesystem {fs}")
    size = out.stat().st_size
    if size == 0:
        raise FormatError(f"{fs.tool} produced an empty image")
    padded = (size + BLOCK - 1) // BLOCK * BLOCK
    if padded != size:
        with open(out, "r+b") as handle:
            handle.truncate(padded)
    return padded
