"""Item 22: what a boot says. A repaired GPT or LUKS2 header copy is a warning (stderr
and the report); a failed boot prints its cause in one line (stage and reason); a wipe
announces itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.bootkit import KERNEL, make_tree
from tests.conftest import need_tool
from tests.simefikit import need_efi_tools

from bastion.cli.main import main
from bastion.formats import gpt
from bastion.storage import disk_image as di


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_efi_tools()
    need_tool("mkfs.ext4")
    base = tmp_path_factory.mktemp("bootreport")
    keys = base / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    (base / "vmlinuz").write_bytes(KERNEL)
    args = [
        "image", "build",
        "--rootfs", str(make_tree(base / "tree")), "--kernel",
        str(base / "vmlinuz"), "--version", "1.0", "--security-version", "1",
        "--keys", str(keys), "--data-size", "24", "-o", str(base / "disk.img"),
    ]  # fmt: skip
    assert main(args) == 0
    booted = base / "booted"
    assert main(["device", "create", str(booted), "--image", str(base / "disk.img"),
                 "--keys", str(keys)]) == 0  # fmt: skip
    assert main(["device", "boot", str(booted)]) == 0  # data volume made on first boot
    return {"base": base, "keys": keys, "image": base / "disk.img", "booted": booted}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _copy(built: dict[str, Path], tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    shutil.copytree(built["booted"], dev)
    return dev


def _primary_header(disk: Path) -> int:
    return gpt.SECTOR + 16  # inside the primary header's CRC-covered bytes


def _backup_header(disk: Path) -> int:
    return disk.stat().st_size - gpt.SECTOR + 16


def _luks_primary(disk: Path) -> int:
    return di.read_layout(disk).find("data").offset + 4096 + 8  # its JSON area


REPAIRS = [
    ("primary GPT", _primary_header, "primary GPT header damaged"),
    ("backup GPT", _backup_header, "backup GPT header damaged"),
    ("LUKS2 primary", _luks_primary, "LUKS2 primary header copy"),
]


@pytest.mark.parametrize(("what", "where", "warning"), REPAIRS, ids=[r[0] for r in REPAIRS])
def test_repaired_header_is_a_warning_on_stderr_and_in_json(
    built: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    what: str,
    where: object,
    warning: str,
) -> None:
    dev = _copy(built, tmp_path)
    disk = dev / "disk.img"
    _flip(disk, where(disk))  # type: ignore[operator]
    code, out, err = _run(capsys, "device", "boot", "--json", str(dev))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["reached"] == "running"
    assert any(warning in w and "rewritten" in w for w in doc["warnings"]), doc["warnings"]
    lines = err.splitlines()
    assert any(line.startswith("bastion: warning: ") and warning in line for line in lines), err
    # repaired for good: the next boot is quiet
    code, out, err = _run(capsys, "device", "boot", str(dev))
    assert code == 0 and err == "" and "warning" not in out


def test_failed_boot_prints_stage_and_reason_in_one_line(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = _copy(built, tmp_path)
    (dev / "profile.json").write_bytes(b"{}")
    code, out, err = _run(capsys, "device", "boot", str(dev))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("bastion: TamperError: firmware: security profile refused")


def _flip_kernel(disk: Path) -> None:
    """One bit of the kernel inside the signed UKI on the ESP."""
    esp = di.read_layout(disk).find("esp")
    raw = disk.read_bytes()[esp.offset : esp.offset + esp.size]
    _flip(disk, esp.offset + raw.index(KERNEL[:16]) + 2)


def test_try_other_slot_failure_keeps_the_cause(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = tmp_path / "dev"
    assert main(["device", "create", str(dev), "--image", str(built["image"]), "--keys",
                 str(built["keys"]), "--tamper-response", "try-other-slot"]) == 0  # fmt: skip
    _flip_kernel(dev / "disk.img")
    code, _, err = _run(capsys, "device", "boot", str(dev))
    assert code == 2, err
    last = err.splitlines()[-1]  # the cause of abandoning the only entry stays in the line
    assert last.startswith("bastion: TamperError: systemd-boot: no entry left to try"), err
    # the counted try renamed the entry (+3-0 -> +2-1) before LoadImage refused it
    assert "abandoned: bastion-1-a+2-1.efi: " in last and "Access Denied" in last, err


def test_wipe_announces_itself(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bastion.device.platform.sim import SimPlatform

    dev = tmp_path / "dev"
    assert main(["device", "create", str(dev), "--image", str(built["image"]), "--keys",
                 str(built["keys"]), "--tamper-response", "wipe-data"]) == 0  # fmt: skip
    assert main(["device", "boot", str(dev)]) == 0
    SimPlatform(dev).fuses().blow_to(5)  # the image's security version 1 is now a rollback
    code, out, err = _run(capsys, "device", "boot", "--json", str(dev))
    assert code == 2
    error = json.loads(out)["error"]
    assert error["code"] == 2 and error["kind"] == "RollbackError"
    assert "data volume wiped" in error["message"]
    lines = err.splitlines()
    assert lines[0].startswith("bastion: warning: tamper response: data volume wiped")
    assert lines[-1].startswith("bastion: RollbackError: stub: ")
    assert "data volume wiped; the device must be re-provisioned" in lines[-1]
    report = json.loads((dev / "boot.json").read_text())
    assert any("data volume wiped" in w for w in report["warnings"])
