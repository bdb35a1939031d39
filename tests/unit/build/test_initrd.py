"""The test initramfs: module closure, ldd parsing, the /init resource, a host build."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.build import device_initrd, initrd
from bastion.errors import ConfigError
from bastion.formats import cpio

DEP = """\
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-mod.ko:
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
"""

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibcryptsetup.so.12 => /lib/x86_64-linux-gnu/libcryptsetup.so.12 (0x00007f)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f)
"""


def test_module_closure_follows_dependencies() -> None:
    dep = initrd.parse_modules_dep(DEP)
    got = initrd.module_closure(dep, ["kernel/fs/ext4/ext4.ko"], ["dm_verity", "ext4"])
    assert got == [
        "kernel/drivers/md/dm-bufio.ko",
        "kernel/drivers/md/dm-mod.ko",
        "kernel/drivers/md/dm-verity.ko",
    ]


def test_module_closure_refuses_unknown_module() -> None:
    with pytest.raises(ConfigError, match="nosuch"):
        initrd.module_closure(initrd.parse_modules_dep(DEP), [], ["nosuch"])


def test_parse_ldd() -> None:
    assert initrd.parse_ldd(LDD) == [
        "/lib/x86_64-linux-gnu/libcryptsetup.so.12",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    with pytest.raises(ConfigError, match="not found"):
        initrd.parse_ldd("\tlibfoo.so.1 => not found\n")


def test_init_script_is_package_data_with_markers() -> None:
    init = initrd.default_init().decode()
    assert init.startswith("#!/bin/sh\n")
    for marker in ("running", "failed: ", "eventlog begin", "poweroff"):
        assert marker in init


def test_compressions_round_trip() -> None:
    data = cpio.archive([cpio.CpioEntry.file("a", b"hello" * 100)])
    assert gzip.decompress(initrd.compress(data, "gzip")) == data
    assert initrd.compress(data, "none") == data
    with pytest.raises(ConfigError):
        initrd.compress(data, "lz4")


def test_host_initrd(tmp_path: Path) -> None:
    kernels = initrd.host_kernels()
    if not kernels:
        pytest.skip("no /boot/vmlinuz-* (install linux-image-amd64)")
    need_tool("depmod", "kmod")
    need_tool("veritysetup")
    if not Path(initrd.DEFAULT_BUSYBOX).is_file():
        pytest.skip("busybox-static is not installed")
    release = initrd.host_kernel_release(kernels[-1])
    entries = initrd.initrd_entries(initrd.InitrdSpec(release))
    names = {e.name: e for e in entries}
    assert names["init"].data == initrd.default_init()
    assert names["init"].mode & 0o111
    assert "usr/sbin/veritysetup" in names
    # the anti-rollback check a device's bastion-antirollback.service runs, sourced by /init
    assert names["etc/bastion/antirollback.sh"].data == device_initrd.antirollback_script()
    # the data volume's unlock: systemd's token plugin where libcryptsetup looks, tpm2-tools,
    # and the TSS libraries they dlopen
    assert "lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-systemd-tpm2.so" in names
    assert "usr/bin/tpm2" in names
    assert "lib/x86_64-linux-gnu/libtss2-tcti-device.so.0" in names
    assert names["bin/sh"].data == b"busybox"
    mods = f"lib/modules/{release}"
    assert f"{mods}/kernel/drivers/md/dm-verity.ko" in names
    assert f"{mods}/kernel/drivers/md/dm-mod.ko" in names
    assert b"dm-verity.ko:" in names[f"{mods}/modules.dep"].data
    # GNU cpio reads the whole archive and extracts the same tree
    data = cpio.archive(entries)
    out = tmp_path / "root"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=out, check=True)
    assert (out / "init").read_bytes() == initrd.default_init()
    assert os.readlink(out / "sbin/modprobe") == "../bin/busybox"
    # the same host files give the same archive
    assert cpio.archive(initrd.initrd_entries(initrd.InitrdSpec(release))) == data
