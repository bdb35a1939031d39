"""Root filesystem images: every type builds, and the same tree gives the same bytes."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.build import fs
from bastion.errors import ConfigError

FS_UUID = uuid.UUID("6b0c1c4e-5c1d-4a53-9f49-0d2f7c3b1a10")


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=bastion\n")
    (root / "bin").mkdir()
    (root / "bin" / "init").write_bytes(os.urandom(0) + b"#!/bin/sh\necho hi\n" * 100)
    (root / "bin" / "sh").symlink_to("init")
    return root


@pytest.mark.parametrize("epoch", [0, 1_700_000_000])
@pytest.mark.parametrize("kind", list(fs.FsType))
def test_reproducible(tmp_path: Path, kind: fs.FsType, epoch: int) -> None:
    need_tool(kind.tool)
    tree = _tree(tmp_path / "tree")
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    size_a = fs.build_filesystem(tree, a, kind, fs_uuid=FS_UUID, epoch=epoch)
    os.utime(tree / "etc" / "os-release", (1, 1))  # source mtimes do not leak in
    time.sleep(1.05)  # the wall clock must not leak in either
    size_b = fs.build_filesystem(tree, b, kind, fs_uuid=FS_UUID, epoch=epoch)
    assert size_a == size_b and size_a % 4096 == 0
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_ext4_is_checked_by_e2fsck(tmp_path: Path) -> None:
    need_tool("mkfs.ext4")
    e2fsck = need_tool("e2fsck")
    tree = _tree(tmp_path / "tree")
    img = tmp_path / "r.img"
    fs.build_filesystem(tree, img, fs.FsType.EXT4, fs_uuid=FS_UUID)
    import subprocess

    proc = subprocess.run([e2fsck, "-fn", str(img)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_not_a_folder_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        fs.build_filesystem(tmp_path / "nope", tmp_path / "x.img", fs.FsType.EXT4, fs_uuid=FS_UUID)


def test_ext4_size_grows_with_tree() -> None:
    assert fs.ext4_size(0) == 4 * 1024 * 1024
    assert fs.ext4_size(100 * 1024 * 1024) > 100 * 1024 * 1024
