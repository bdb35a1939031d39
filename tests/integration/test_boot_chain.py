"""The boot chain on sim devices: tamper matrix, rollback table, measured boot.

One image is built per module and one device is created and booted once (first boot:
data volume created and sealed); each test works on a sparse copy of that device.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.bootkit import KERNEL, make_tree, product_keys, spec_for, trust_of
from tests.conftest import need_tool

from bastion.build import image as img
from bastion.device import boot as chain
from bastion.device.boot_create import create_device, sign_profile
from bastion.device.platform.sim import SimPlatform
from bastion.device.profile import device_id, make_profile
from bastion.errors import (
    BastionError,
    DigestMismatchError,
    FormatError,
    PolicyError,
    RollbackError,
    SignatureError,
    TamperError,
    VerificationError,
)
from bastion.formats import bootunit as bu
from bastion.formats import eventlog as el
from bastion.formats import image as fi
from bastion.storage import disk_image as di
from bastion.storage import recovery, sealed
from bastion.storage.luks2_volume import FileRange, Luks2Volume
from bastion.storage.verity_reader import VerityReader
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.trust import image as ti
from bastion.trust import measure

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    need_tool("mkfs.ext4")
    root = tmp_path_factory.mktemp("boot")
    tree = make_tree(root / "tree", payload=256 * 1024)
    built = img.build_image(spec_for(tree), product_keys(), root / "disk.img")
    fresh = root / "fresh"
    create_device(fresh, built.path, trust_of(product_keys()), product_keys().platform_root)
    booted = root / "booted"
    _copy_device(fresh, booted)
    report = chain.boot(booted)
    return {"root": root, "tree": tree, "image": built, "fresh": fresh, "booted": booted,
            "report": report}  # fmt: skip


def _copy_device(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for item in src.iterdir():
        if item.name == "disk.img":
            size = item.stat().st_size
            with open(item, "rb") as fin, open(dest / item.name, "wb") as fout:
                fout.truncate(size)
                pos = 0
                for block in iter(lambda: fin.read(1 << 22), b""):
                    if block.count(0) != len(block):
                        os.pwrite(fout.fileno(), block, pos)
                    pos += len(block)
        elif item.is_file():
            shutil.copy2(item, dest / item.name)
        else:
            shutil.copytree(item, dest / item.name)
    return dest


def _device(base: dict[str, object], tmp_path: Path, which: str = "booted") -> Path:
    return _copy_device(base[which], tmp_path / "dev")  # type: ignore[arg-type]


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ (1 << bit)]))


def _archive_entry_offset(disk: Path, name: str) -> int:
    """Absolute disk offset of an entry in the boot archive."""
    layout = di.read_layout(disk)
    part = layout.find(fi.PART_BOOT)
    raw = di.read_partition(disk, part, 1 << 20)
    count = int.from_bytes(raw[12:16], "little")
    for i in range(count):
        base = 16 + 32 * i
        if raw[base : base + 16].rstrip(b"\0").decode() == name:
            return part.offset + int.from_bytes(raw[base + 16 : base + 24], "little")
    raise AssertionError(name)


def _section_offset(disk: Path, slot: str, section: str) -> int:
    unit_at = _archive_entry_offset(disk, f"unit.{slot}")
    with open(disk, "rb") as handle:
        handle.seek(unit_at)
        head = handle.read(16 + 32 * 16)
    count = int.from_bytes(head[12:16], "little")
    for i in range(count):
        base = 16 + 32 * i
        if head[base : base + 16].rstrip(b"\0").decode() == section:
            return unit_at + int.from_bytes(head[base + 16 : base + 24], "little")
    raise AssertionError(section)


def _part(disk: Path, name: str) -> int:
    return di.read_layout(disk).find(name).offset


def _stage_of(exc: BaseException) -> str:
    return str(exc).split(":", 1)[0]


# --- first boot and second boot ----------------------------------------------------------


def test_first_boot_creates_sealed_volume_and_shows_recovery_key_once(
    base: dict[str, object],
) -> None:
    report = base["report"]
    assert isinstance(report, chain.BootReport)
    assert report.reached is chain.Stage.RUNNING and report.first_boot
    assert report.recovery_key and len(report.recovery_key) == 71
    stored = json.loads((base["booted"] / "boot.json").read_text())  # type: ignore[operator]
    assert "recovery_key" not in stored
    assert report.recovery_key not in (base["booted"] / "boot.json").read_text()  # type: ignore[operator]


def test_second_boot_unseals(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path)
    report = chain.boot(dev)
    assert report.reached is chain.Stage.RUNNING
    assert not report.first_boot and report.recovery_key is None
    again = chain.boot(dev, full_verify=True)
    assert again.reached is chain.Stage.RUNNING and "root verified in full" in again.notes


# --- tamper matrix -----------------------------------------------------------------------


def _loader(d: Path) -> int:
    return _archive_entry_offset(d, "loader") + 20


def _section(name: str) -> Callable[[Path], int]:
    return lambda d: _section_offset(d, "a", name) + 3


def _verity_sig(d: Path) -> int:
    return _part(d, "root-a-verity-sig") + 40


def _hash_top(d: Path) -> int:
    return _part(d, "root-a-verity") + 4096 + 5


def _fuses(d: Path) -> int:
    return 20


TAMPER = [
    # (region, offset function, file, full_verify, expected error, stage)
    ("bootloader stage", _loader, "disk.img", False, TamperError, "rom"),
    ("kernel", _section(".linux"), "disk.img", False, TamperError, "bootloader"),
    ("initrd", _section(".initrd"), "disk.img", False, TamperError, "bootloader"),
    ("command line", _section(".cmdline"), "disk.img", False, TamperError, "bootloader"),
    ("os-release", _section(".osrel"), "disk.img", False, TamperError, "bootloader"),
    ("verity signature", _verity_sig, "disk.img", False, VerificationError, "initrd"),
    ("hash tree (top level)", _hash_top, "disk.img", False, DigestMismatchError, "running"),
    ("hash tree, full verify", _hash_top, "disk.img", True, DigestMismatchError, "initrd"),
    ("fuse bank", _fuses, "fuses", False, TamperError, "rom"),
    ("boot archive header", lambda d: _part(d, "boot") + 9, "disk.img", False, TamperError, "rom"),
    ("unit statement", lambda d: _archive_entry_offset(d, "unit.a.sig") + 30, "disk.img", False,
     (VerificationError, FormatError), "bootloader"),
    ("loader statement", lambda d: _archive_entry_offset(d, "loader.sig") + 30, "disk.img", False,
     (VerificationError, FormatError), "rom"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("region", "where", "target", "full", "error", "stage"),
    TAMPER,
    ids=[t[0] for t in TAMPER],
)
def test_tamper_matrix(
    base: dict[str, object],
    tmp_path: Path,
    region: str,
    where: Callable[[Path], int],
    target: str,
    full: bool,
    error: type[BaseException] | tuple[type[BaseException], ...],
    stage: str,
) -> None:
    dev = _device(base, tmp_path)
    _flip(dev / target, where(dev / "disk.img") if target == "disk.img" else where(dev))
    with pytest.raises(error) as info:
        chain.boot(dev, full_verify=full)
    assert _stage_of(info.value) == stage, f"{region}: {info.value}"
    report = json.loads((dev / "boot.json").read_text())
    assert report["error"] and report["reached"] != "running"


def test_root_data_bit_flip_full_verify_and_first_read(
    base: dict[str, object], tmp_path: Path
) -> None:
    dev = _device(base, tmp_path)
    disk = dev / "disk.img"
    layout = di.read_layout(disk)
    root = layout.find("root-a")
    target_block = 200  # inside the payload, far from what mounting reads
    _flip(disk, root.offset + target_block * 4096 + 17)
    with pytest.raises(DigestMismatchError) as info:
        chain.boot(dev, full_verify=True)
    assert _stage_of(info.value) == "initrd" and info.value.block == target_block
    report = chain.boot(dev)  # lazy: mounting does not read the damaged block
    assert report.reached is chain.Stage.RUNNING
    root_hash = bytes.fromhex(report.root_hash or "")
    verity = layout.find("root-a-verity")
    with VerityReader(
        disk, disk, root_hash, data_offset=root.offset, hash_offset=verity.offset
    ) as r:
        r.pread(4096, 0)
        with pytest.raises(DigestMismatchError) as first_read:
            r.pread(4096, target_block * 4096)
    assert first_read.value.block == target_block


def test_shrunk_verity_superblock_refused(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path)
    disk = dev / "disk.img"
    at = _part(disk, "root-a-verity") + 72  # superblock data_blocks (u64 LE)
    with open(disk, "r+b") as handle:
        handle.seek(at)
        blocks = int.from_bytes(handle.read(8), "little")
        handle.seek(at)
        handle.write((blocks // 2).to_bytes(8, "little"))
    with pytest.raises(VerificationError) as info:
        chain.boot(dev)
    assert _stage_of(info.value) == "initrd"


def test_data_volume_header_bit_flip_falls_back_to_secondary(
    base: dict[str, object], tmp_path: Path
) -> None:
    dev = _device(base, tmp_path)
    _flip(dev / "disk.img", _part(dev / "disk.img", "data") + 300)
    report = chain.boot(dev)
    assert report.reached is chain.Stage.RUNNING


def test_boot_control_bit_flip_falls_back_to_other_copy(
    base: dict[str, object], tmp_path: Path
) -> None:
    dev = _device(base, tmp_path)
    disk = dev / "disk.img"
    part = _part(disk, "bootctl")
    # the winning copy after two boots is copy 1 (the chain writes the losing copy)
    _flip(disk, part + 24)
    _flip(disk, part + 4096 + 24)
    report = chain.boot(dev)
    assert report.reached is chain.Stage.RUNNING
    assert any("boot-control copy" in n for n in report.notes)


def test_primary_gpt_bit_flip_falls_back_to_backup(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path)
    _flip(dev / "disk.img", 512 + 40)
    assert chain.boot(dev).reached is chain.Stage.RUNNING


def test_tpm_nv_fuses_rollback(base: dict[str, object], tmp_path: Path) -> None:
    from bastion.tpm.fuses import TpmFuseBank

    built = base["image"]
    assert isinstance(built, img.BuiltImage)
    dev = tmp_path / "nv"
    create_device(
        dev, built.path, trust_of(product_keys()), product_keys().platform_root, fuses="tpm"
    )
    assert not (dev / "fuses").exists()
    assert chain.boot(dev).reached is chain.Stage.RUNNING
    plat = SimPlatform(dev)
    tpm = plat.open_tpm()
    try:
        bank = TpmFuseBank(tpm)
        assert bank.counter() == 1
        assert bank.key_hash() == trust_of(product_keys()).platform_root_hash
        bank.blow_to(2)
    finally:
        tpm.close()
    with pytest.raises(RollbackError, match=r"^bootloader: slot a security version 1"):
        chain.boot(dev)


def test_profile_tamper_halts(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path)
    raw = bytearray((dev / "profile.json").read_bytes())
    raw[raw.index(b'"payload"') + 15] ^= 1
    (dev / "profile.json").write_bytes(bytes(raw))
    with pytest.raises(TamperError, match=r"^rom: security profile"):
        chain.boot(dev)


def test_image_of_another_product_refused_by_rom(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path, "fresh")
    other = img.build_image(
        spec_for(base["tree"]),
        product_keys(1),
        tmp_path / "other.img",  # type: ignore[arg-type]
    )
    shutil.copy(other.path, dev / "disk.img")
    with pytest.raises(TamperError, match=r"^rom: platform key hash"):
        chain.boot(dev)


def test_create_refuses_an_image_whose_signature_fails(
    base: dict[str, object], tmp_path: Path
) -> None:
    built = base["image"]
    assert isinstance(built, img.BuiltImage)
    copy = tmp_path / "disk.img"
    shutil.copy(built.path, copy)
    shutil.copy(built.path.with_name("disk.img.sig"), tmp_path / "disk.img.sig")
    _flip(copy, _part(copy, "root-a") + 4096 * 3)
    with pytest.raises(SignatureError):
        create_device(tmp_path / "d", copy, trust_of(product_keys()), product_keys().platform_root)
    assert not (tmp_path / "d").exists()


# --- tamper responses and audit ----------------------------------------------------------


def test_wipe_data_response(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path)
    sign_profile(dev, make_profile("wipe-data"), product_keys().platform_root)
    _flip(dev / "disk.img", _section_offset(dev / "disk.img", "a", ".linux") + 1)
    with pytest.raises(TamperError, match=r"^bootloader"):
        chain.boot(dev)
    with open(dev / "disk.img", "rb") as handle:
        handle.seek(_part(dev / "disk.img", "data"))
        assert handle.read(4096) == bytes(4096)
    with pytest.raises(TamperError, match="re-provision"):
        chain.boot(dev)


def test_audit_mode_logs_and_continues(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path, "fresh")
    sign_profile(dev, make_profile("halt", ("unit-signature",)), product_keys().platform_root)
    _flip(dev / "disk.img", _section_offset(dev / "disk.img", "a", ".osrel") + 1)
    report = chain.boot(dev)
    assert report.reached is chain.Stage.RUNNING
    assert any("unit-signature" in w and ".osrel" in w for w in report.warnings)
    built = base["image"]
    assert isinstance(built, img.BuiltImage)
    assert report.pcrs[11] != ti.predict_pcrs(di.DiskImage(built.path))[11].hex()


def test_try_other_slot_with_empty_slot_b_halts(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path)
    sign_profile(dev, make_profile("try-other-slot"), product_keys().platform_root)
    _flip(dev / "disk.img", _section_offset(dev / "disk.img", "a", ".linux") + 1)
    with pytest.raises(TamperError, match=r"^bootloader: no bootable slot"):
        chain.boot(dev)


def test_try_other_slot_boots_slot_b(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path, "fresh")
    tree = make_tree(tmp_path / "tb", payload=128 * 1024)
    root_b = img.install_slot(
        dev / "disk.img", spec_for(tree, version="1.1.0"), product_keys(), "b", activate=False
    )
    sign_profile(dev, make_profile("try-other-slot"), product_keys().platform_root)
    _flip(dev / "disk.img", _section_offset(dev / "disk.img", "a", ".linux") + 1)
    report = chain.boot(dev)
    assert report.reached is chain.Stage.RUNNING and report.slot == "b"
    assert report.root_hash == root_b.hex() and report.version == "1.1.0"
    assert any("slot a marked unbootable" in n and "bootloader:" in n for n in report.notes)
    assert chain.boot(dev).slot == "b"


def test_installed_slot_b_activated_boots(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path, "fresh")
    tree = make_tree(tmp_path / "tb", payload=64 * 1024)
    img.install_slot(dev / "disk.img", spec_for(tree, security_version=2), product_keys(), "b")
    report = chain.boot(dev, full_verify=True)
    assert report.slot == "b" and report.security_version == 2
    assert SimPlatform(dev).fuses().counter() == 2
    predicted = ti.predict_pcrs(di.DiskImage(dev / "disk.img"), "b")
    assert {i: predicted[i].hex() for i in measure.GOLDEN_PCRS} == report.pcrs


def test_tries_left_run_out_then_no_bootable_slot(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path, "fresh")
    _flip(dev / "disk.img", _hash_top(dev / "disk.img"))  # every boot fails at mount
    for _ in range(3):
        with pytest.raises(DigestMismatchError):
            chain.boot(dev)
    with pytest.raises(TamperError, match=r"^bootloader: no bootable slot"):
        chain.boot(dev)


# --- rollback ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counter", "svn", "boots"),
    [(0, 1, True), (1, 1, True), (2, 1, False), (5, 1, False)],
    ids=["below-image", "equal", "one-above", "far-above"],
)
def test_rollback_table(
    base: dict[str, object], tmp_path: Path, counter: int, svn: int, boots: bool
) -> None:
    dev = _device(base, tmp_path, "fresh")
    fuses = SimPlatform(dev).fuses()
    fuses.blow_to(counter)
    if boots:
        report = chain.boot(dev)
        assert report.security_version == svn
        assert fuses.counter() == max(counter, svn)
    else:
        with pytest.raises(RollbackError, match=r"^bootloader: slot a security version 1"):
            chain.boot(dev)
        assert fuses.counter() == counter


def test_counter_cannot_be_lowered(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path, "fresh")
    fuses = SimPlatform(dev).fuses()
    fuses.blow_to(3)
    with contextlib.suppress(BastionError):
        fuses.blow_to(1)
    assert fuses.counter() == 3


def test_counter_raised_only_after_a_successful_boot(
    base: dict[str, object], tmp_path: Path
) -> None:
    dev = _device(base, tmp_path, "fresh")
    tree = make_tree(tmp_path / "t2", payload=256 * 1024)
    newer = img.build_image(spec_for(tree, security_version=4), product_keys(), tmp_path / "v4.img")
    shutil.copy(newer.path, dev / "disk.img")
    fuses = SimPlatform(dev).fuses()
    _flip(dev / "disk.img", _hash_top(dev / "disk.img"))  # fails at mount
    with pytest.raises(DigestMismatchError):
        chain.boot(dev)
    assert fuses.counter() == 0
    _flip(dev / "disk.img", _hash_top(dev / "disk.img"))  # repaired
    assert chain.boot(dev).reached is chain.Stage.RUNNING
    assert fuses.counter() == 4


# --- measured boot -----------------------------------------------------------------------


def _tpm_pcrs(dev: Path) -> dict[int, bytes]:
    tpm = SimPlatform(dev).open_tpm()
    try:
        return tpm.pcr_read(PcrSelection(HashAlg.SHA256, measure.GOLDEN_PCRS))
    finally:
        tpm.close()


def test_event_log_replay_equals_tpm_and_prediction(
    base: dict[str, object], tmp_path: Path
) -> None:
    dev = _device(base, tmp_path)
    chain.boot(dev)
    replay = el.replay(chain.read_eventlog(dev).events)
    tpm = _tpm_pcrs(dev)
    built = base["image"]
    assert isinstance(built, img.BuiltImage)
    predicted = ti.predict_pcrs(di.DiskImage(built.path))
    for i in measure.GOLDEN_PCRS:
        assert replay[i] == tpm[i] == predicted[i], f"PCR {i}"


def test_key_cannot_be_unsealed_after_boot_but_recovery_key_opens(
    base: dict[str, object], tmp_path: Path
) -> None:
    dev = _device(base, tmp_path)
    chain.boot(dev)
    disk = dev / "disk.img"
    data = di.read_layout(disk).find("data")
    tpm = SimPlatform(dev).open_tpm()
    try:
        with FileRange(disk, offset=data.offset, size=data.size) as storage:
            volume = Luks2Volume.open(storage)
            with pytest.raises(PolicyError):
                sealed.unlock_with_token(volume, tpm)
            report = base["report"]
            assert isinstance(report, chain.BootReport) and report.recovery_key
            recovery.unlock_recovery_key(volume, report.recovery_key)
            assert volume.is_unlocked
    finally:
        tpm.close()


def test_different_kernel_changes_pcrs_and_key_is_not_released(
    base: dict[str, object], tmp_path: Path
) -> None:
    dev = _device(base, tmp_path)
    tree = make_tree(tmp_path / "t", payload=256 * 1024)
    kernel = bytearray(KERNEL)
    kernel[5] ^= 0x20  # same length: same layout, a different (properly signed) kernel
    other = img.build_image(
        spec_for(tree, kernel=bytes(kernel)), product_keys(), tmp_path / "k.img"
    )
    built = base["image"]
    assert isinstance(built, img.BuiltImage)
    assert (
        ti.predict_pcrs(di.DiskImage(other.path))[11]
        != ti.predict_pcrs(di.DiskImage(built.path))[11]
    )
    layout = di.read_layout(other.path)
    boot_part = layout.find(fi.PART_BOOT)
    assert di.read_layout(dev / "disk.img").find(fi.PART_BOOT).offset == boot_part.offset
    with open(dev / "disk.img", "r+b") as handle:
        handle.seek(boot_part.offset)
        handle.write(di.read_partition(other.path, boot_part))
    with pytest.raises(PolicyError, match=r"^initrd: data key not released"):
        chain.boot(dev)
    log = chain.read_eventlog(dev)
    assert el.replay(log.events)[11] == ti.predict_pcrs(di.DiskImage(other.path))[11]


def test_unit_statement_names_slot(base: dict[str, object]) -> None:
    built = base["image"]
    assert isinstance(built, img.BuiltImage)
    archive = di.read_archive(built.path, di.read_layout(built.path))
    doc = ti.open_statement(
        archive.get("unit.a.sig"), bu.STATEMENT_TYPE_UNIT, trust_of(product_keys()).boot
    )
    assert doc["slot"] == "a"


# --- the security profile is bound to one device and cannot be rolled back ----------------


def test_profile_for_another_device_refused(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path)
    other = make_profile("halt", ("unit-signature",), device=device_id(b"another device's EK"))
    sign_profile(dev, other, product_keys().platform_root)
    with pytest.raises(TamperError, match=r"^rom: security profile refused: it is for device"):
        chain.boot(dev)


def test_profile_copied_from_another_device_refused(
    base: dict[str, object], tmp_path: Path
) -> None:
    dev = _device(base, tmp_path)
    built = base["image"]
    assert isinstance(built, img.BuiltImage)
    twin = tmp_path / "twin"  # a second device of the same product: its own TPM and EK
    create_device(twin, built.path, trust_of(product_keys()), product_keys().platform_root)
    sign_profile(twin, make_profile("halt", ("verity",), serial=2), product_keys().platform_root)
    assert chain.boot(twin).reached is chain.Stage.RUNNING
    shutil.copy(twin / "profile.json", dev / "profile.json")
    with pytest.raises(TamperError, match=r"^rom: security profile refused: it is for device"):
        chain.boot(dev)


def test_profile_serial_rollback_refused(base: dict[str, object], tmp_path: Path) -> None:
    dev = _device(base, tmp_path)
    old = (dev / "profile.json").read_bytes()  # serial 1, accepted by the first boot
    sign_profile(dev, make_profile("halt", serial=3), product_keys().platform_root)
    assert chain.boot(dev).reached is chain.Stage.RUNNING  # newer serial accepted
    (dev / "profile.json").write_bytes(old)
    with pytest.raises(RollbackError, match=r"^rom: security profile serial 1 is older than"):
        chain.boot(dev)
    sign_profile(dev, make_profile("halt", serial=3), product_keys().platform_root)
    assert chain.boot(dev).reached is chain.Stage.RUNNING  # equal serial accepted
