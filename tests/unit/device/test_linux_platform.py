"""The ``linux`` platform over a fake tree (ADR 0028): a disk image as ROOT/dev/vda, a
sysfs block tree, efivarfs files, an ESP folder; kernel tools through a recording
runner, or the real ``veritysetup verify`` where the host can run it."""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from tests.conftest import need_tool
from tests.runnerkit import RecordingRunner

from bastion.build.disk import DiskPart, write_disk
from bastion.device.platform.base import ConsoleKind
from bastion.device.platform.linux import LinuxPlatform
from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    LimitError,
    NotFoundError,
    PolicyError,
)
from bastion.formats import gpt
from bastion.formats.uki import cmdline_root_hash
from bastion.formats.verity import VerityParams
from bastion.io.runner import CommandRunner
from bastion.limits import PLATFORM_EFI_VAR_MAX_SIZE
from bastion.storage import kernel_crypt, kernel_verity
from bastion.storage.kernel_verity import CorruptionResponse
from bastion.storage.verity_reader import format_region
from bastion.tpm.swtpm import Swtpm

SECURE_BOOT = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
NAMES = ("esp", "root-x86-64", "root-x86-64-verity", "data")


@dataclass(frozen=True)
class Tree:
    root: Path
    root_hash: bytes
    layout: gpt.GptDisk


def _sysfs(root: Path, disk: str, layout: gpt.GptDisk) -> None:
    block = root / "sys/class/block"
    (block / disk).mkdir(parents=True, exist_ok=True)
    for n, part in enumerate(layout.partitions, 1):
        for folder in (block / disk / f"{disk}{n}", block / f"{disk}{n}"):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "partition").write_text(f"{n}\n")
            (folder / "start").write_text(f"{part.first_lba}\n")


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "root"
    work = tmp_path / "work"
    work.mkdir()
    (work / "root.img").write_bytes(bytes(range(256)) * 16 * 64)  # 64 blocks
    verity = format_region(
        work / "root.img", work / "hash.img", VerityParams(64, salt=b"\x02" * 32)
    )
    (work / "esp.img").write_bytes(b"FAT" + bytes(4093))
    (work / "data.img").write_bytes(b"LUKS\xba\xbe" + bytes(4090))
    root_uuid, verity_uuid = gpt.verity_partition_uuids(verity.root_hash)
    parts = [
        DiskPart("esp", gpt.TYPE_ESP, gpt.derived_uuid("t", b"esp"), work / "esp.img", 0),
        DiskPart("root-x86-64", gpt.TYPE_ROOT_X86_64, root_uuid, work / "root.img", 0),
        DiskPart(
            "root-x86-64-verity", gpt.TYPE_ROOT_VERITY_X86_64, verity_uuid, work / "hash.img", 0
        ),
        DiskPart("data", gpt.TYPE_LINUX_DATA, gpt.derived_uuid("t", b"data"), work / "data.img", 0),
    ]
    (root / "dev").mkdir(parents=True)
    layout = write_disk(root / "dev/vda", gpt.derived_uuid("t", b"disk"), parts)
    # the partitions' block devices: their bytes, as the kernel would show them
    with open(root / "dev/vda", "rb") as disk:
        for n, part in enumerate(layout.partitions, 1):
            disk.seek(part.offset)
            (root / f"dev/vda{n}").write_bytes(disk.read(part.size))
    _sysfs(root, "vda", layout)
    (root / "sys/class/block/loop0").mkdir()
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text(f"console=ttyS0 roothash={verity.root_hash.hex()} ro\n")
    return Tree(root, verity.root_hash, layout)


def test_finds_the_disk_by_the_root_hash_and_partitions_by_start_sector(tree: Tree) -> None:
    plat = LinuxPlatform(tree.root)
    assert plat.find_disk() == "vda"
    assert [p.name for p in plat.disk_layout().partitions] == list(NAMES)
    for n, name in enumerate(NAMES, 1):
        assert plat.partition_device(name) == tree.root / f"dev/vda{n}"
    assert plat.read_partition("data", 6) == b"LUKS\xba\xbe"
    plat.write_partition("data", 6, b"!!")
    assert plat.read_partition("data", 8) == b"LUKS\xba\xbe!!"
    with plat.partition_storage("data") as storage:
        assert storage.size == tree.layout.find("data").size


def test_disk_lookup_refusals(tree: Tree) -> None:
    (tree.root / "proc/cmdline").write_text("console=ttyS0\n")
    with pytest.raises(ConfigError, match="no roothash="):
        LinuxPlatform(tree.root).find_disk()
    assert LinuxPlatform(tree.root, disk_device="/dev/vda").find_disk() == "vda"
    with pytest.raises(ConfigError, match="not a /dev path"):
        LinuxPlatform(tree.root, disk_device="vda").find_disk()
    (tree.root / "proc/cmdline").write_text(f"roothash={tree.root_hash.hex()}\n")
    # a second disk with the same root partition: ambiguous, refused
    shutil.copyfile(tree.root / "dev/vda", tree.root / "dev/vdb")
    (tree.root / "sys/class/block/vdb").mkdir()
    with pytest.raises(NotFoundError, match=r"\['vda', 'vdb'\]"):
        LinuxPlatform(tree.root).find_disk()
    os.unlink(tree.root / "dev/vdb")
    (tree.root / "proc/cmdline").write_text(f"roothash={bytes(32).hex()}\n")
    with pytest.raises(NotFoundError, match="found none"):
        LinuxPlatform(tree.root).find_disk()
    (tree.root / "proc/cmdline").write_text("roothash=XYZ\n")
    with pytest.raises(FormatError, match="roothash="):
        LinuxPlatform(tree.root).find_disk()


def test_partition_without_a_sysfs_entry_is_not_found(tree: Tree) -> None:
    shutil.rmtree(tree.root / "sys/class/block/vda/vda4")
    with pytest.raises(NotFoundError, match="partition 'data'"):
        LinuxPlatform(tree.root).partition_device("data")
    with pytest.raises(FormatError, match="no partition named"):
        LinuxPlatform(tree.root).partition_device("home")


def test_verify_root_with_the_real_veritysetup(tree: Tree) -> None:
    need_tool("veritysetup")
    plat = LinuxPlatform(tree.root, runner=CommandRunner())
    size = tree.layout.find("root-x86-64").size
    plat.verify_root("root-x86-64", "root-x86-64-verity", tree.root_hash, 64 * 4096)
    with pytest.raises(DigestMismatchError, match="root hash"):
        plat.verify_root("root-x86-64", "root-x86-64-verity", bytes(32), 64 * 4096)
    with pytest.raises(FormatError, match="does not fit"):
        plat.verify_root("root-x86-64", "root-x86-64-verity", tree.root_hash, size + 4096)
    with open(tree.root / "dev/vda2", "r+b") as handle:
        handle.seek(7 * 4096)
        handle.write(b"\xff\xfe")  # the pattern has 00 01 there
    with pytest.raises(DigestMismatchError) as caught:
        plat.verify_root("root-x86-64", "root-x86-64-verity", tree.root_hash, 64 * 4096)
    assert caught.value.block == 7


def test_open_root_maps_with_the_profile_response_and_reads_the_mapping(tree: Tree) -> None:
    runner = RecordingRunner()
    plat = LinuxPlatform(tree.root, runner=runner, verity_response=CorruptionResponse.PANIC)
    (tree.root / "dev/mapper").mkdir()
    (tree.root / "dev/mapper/bastion-root").write_bytes(b"R" * 8192)  # what the kernel maps
    opened = plat.open_root("root-x86-64", "root-x86-64-verity", tree.root_hash, 8192)
    assert opened.pread(4, 4096) == b"RRRR"
    with pytest.raises(FormatError, match="outside"):
        opened.pread(4, 8190)
    opened.close()
    assert runner.argvs == [
        kernel_verity.open_argv(
            str(tree.root / "dev/vda2"),
            "bastion-root",
            str(tree.root / "dev/vda3"),
            tree.root_hash,
            CorruptionResponse.PANIC,
        ),
        kernel_verity.close_argv("bastion-root"),
    ]


def test_open_data_volume_by_token(tree: Tree) -> None:
    runner = RecordingRunner()
    plat = LinuxPlatform(tree.root, runner=runner)
    assert plat.open_data_volume("data") == tree.root / "dev/mapper/bastion-data"
    assert runner.argvs == [
        kernel_crypt.open_token_argv(str(tree.root / "dev/vda4"), "bastion-data")
    ]
    refused = RecordingRunner({("cryptsetup", "open"): (1, "", "No usable token is available.\n")})
    with pytest.raises(PolicyError, match="No usable token"):
        replace(plat, runner=refused).open_data_volume("data")


def test_efi_variables(tree: Tree) -> None:
    plat = LinuxPlatform(tree.root)
    assert plat.efi_variable(SECURE_BOOT) is None
    efivars = tree.root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    (efivars / SECURE_BOOT).write_bytes(b"\x06\x00\x00\x00\x01")
    assert plat.efi_variable(SECURE_BOOT) == b"\x06\x00\x00\x00\x01"
    for bad in ("SecureBoot", "../x-8be4df61-93ca-11d2-aa0d-00e098032b8c", ""):
        with pytest.raises(ConfigError, match="Name-VendorGuid"):
            plat.efi_variable(bad)
    big = "Big-8be4df61-93ca-11d2-aa0d-00e098032b8c"
    (efivars / big).write_bytes(bytes(PLATFORM_EFI_VAR_MAX_SIZE + 1))
    with pytest.raises(LimitError):
        plat.efi_variable(big)


def test_esp_at_efi_or_boot_efi(tree: Tree) -> None:
    plat = LinuxPlatform(tree.root)
    with pytest.raises(NotFoundError, match="no ESP"):
        plat.esp()
    (tree.root / "boot/efi/EFI/Linux").mkdir(parents=True)
    plat.esp().write("EFI/Linux/bastion+3-0.efi", b"uki")
    assert (tree.root / "boot/efi/EFI/Linux/bastion+3-0.efi").read_bytes() == b"uki"
    (tree.root / "efi/EFI").mkdir(parents=True)
    assert plat.esp().list("EFI/Linux") == []  # /efi wins when it holds EFI/


def test_console_lines_carry_journal_levels(tree: Tree) -> None:
    out = io.StringIO()
    plat = LinuxPlatform(tree.root, stream=out)
    plat.console(ConsoleKind.MARKER, "initrd reached")
    plat.console(ConsoleKind.WARNING, "audit: verity\nfailed")
    plat.console(ConsoleKind.NOTE, "slot a")
    assert out.getvalue().splitlines() == [
        "<6>bastion: initrd reached",
        "<4>bastion: audit: verity failed",
        "<5>bastion: slot a",
    ]


def test_store_and_state_under_var_lib_bastion(tree: Tree) -> None:
    plat = LinuxPlatform(tree.root)
    assert plat.load("eventlog.bin") is None and plat.state() == {}
    plat.store("eventlog.bin", b"log")
    plat.set_state(reprovision=True)
    plat.set_state(data_volume="open")
    assert (tree.root / "var/lib/bastion/eventlog.bin").read_bytes() == b"log"
    assert plat.state() == {"reprovision": True, "data_volume": "open"}
    for bad in ("../etc/passwd", "a/b", "", ".hidden"):
        with pytest.raises(ConfigError, match="store name"):
            plat.store(bad, b"x")


def test_tpm_fuses_and_power_on(tree: Tree, tmp_path: Path) -> None:
    plat = LinuxPlatform(tree.root)
    with pytest.raises(NotFoundError, match="tpmrm0"), plat.power_on():
        pass
    with pytest.raises(ConfigError, match="fuses in the TPM"):
        plat.fuses()
    need_tool("swtpm")
    with (
        Swtpm.start((tmp_path / "tpm").resolve()) as sw,
        replace(plat, tpm_uri=sw.uri).power_on() as tpm,
    ):
        bank = plat.fuses(tpm)
        assert bank.key_hash() is None
        bank.burn_key_hash(b"\x11" * 32)
        assert bank.key_hash() == b"\x11" * 32


def test_cmdline_root_hash() -> None:
    h = "ab" * 32
    assert cmdline_root_hash(f"a roothash={h} b") == bytes.fromhex(h)
    assert cmdline_root_hash("console=ttyS0") is None
    with pytest.raises(FormatError):
        cmdline_root_hash(f"roothash={h.upper()}")
