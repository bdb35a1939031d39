"""``bastion device create|boot|inspect|eventlog``: the demo path end to end on the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.bootkit import KERNEL, make_tree
from tests.conftest import need_module, need_tool
from tests.simefikit import need_efi_tools

from bastion.cli.main import main
from bastion.storage import disk_image as di


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_efi_tools()
    need_tool("mkfs.ext4")
    base = tmp_path_factory.mktemp("devcli")
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
    return {"base": base, "keys": keys, "image": base / "disk.img"}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_create_boot_twice_eventlog_inspect_tamper(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = tmp_path / "dev"
    capsys.readouterr()
    code, out, _ = _run(
        capsys, "device", "create", str(dev), "--image", str(setup["image"]), "--keys",
        str(setup["keys"]),
    )  # fmt: skip
    assert code == 0 and "image signature verified" in out
    code, out, _ = _run(capsys, "device", "boot", str(dev))
    assert code == 0 and "RECOVERY KEY" in out and "-> running" in out
    code, out, _ = _run(capsys, "device", "boot", "--json", str(dev))
    doc = json.loads(out)
    assert code == 0 and doc["reached"] == "running" and not doc["first_boot"]
    assert "recovery_key" not in doc
    code, out, _ = _run(capsys, "device", "eventlog", "--check", "--json", str(dev))
    log = json.loads(out)
    assert code == 0 and log["tpm_matches"] is True
    code, out, _ = _run(
        capsys, "image", "pcrs", "--json", "--keys", str(setup["keys"]), str(setup["image"])
    )
    # the firmware log ends at the kernel hand-off: PCRs 0, 4, 7, 9 equal the prediction
    # (PCR 11 gains the initrd phases in the userspace log, which the replay includes)
    predicted = json.loads(out)["pcrs"]
    assert all(log["replay"][k] == predicted[k] for k in ("0", "4", "7", "9", "11"))
    code, out, _ = _run(capsys, "device", "inspect", "--json", str(dev))
    info = json.loads(out)
    assert info["fuses"]["counter"] == 1
    assert info["esp"]["entries"] == ["bastion-1-a.efi"]  # blessed: the counter dropped
    # tamper: one bit of the kernel inside the signed UKI on the ESP
    disk = dev / "disk.img"
    esp = di.read_layout(disk).find("esp")
    raw = disk.read_bytes()
    at = esp.offset + raw[esp.offset : esp.offset + esp.size].index(KERNEL[:16]) + 2
    with open(disk, "r+b") as handle:
        handle.seek(at)
        handle.write(bytes([raw[at] ^ 1]))
    code, out, err = _run(capsys, "device", "boot", str(dev))
    assert code == 2 and err.count("\n") == 1, err
    assert "Access Denied" in err and "bastion-1-a.efi" in err, err


def test_create_refuses_wrong_keys(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert main(["keys", "init", str(other)]) == 0
    capsys.readouterr()
    code, _, err = _run(
        capsys, "device", "create", str(tmp_path / "d"), "--image", str(setup["image"]),
        "--keys", str(other),
    )  # fmt: skip
    assert code == 2 and "SignatureError" in err and err.count("\n") == 1


def test_boot_not_a_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "device", "boot", str(tmp_path))
    assert code == 5 and "not a bastion device" in err


def test_swtpm_device_boots_twice(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_tool("swtpm")
    need_module("tpm2_pytss", "tpm2-pytss")
    dev = tmp_path / "sw"
    capsys.readouterr()
    code, _, err = _run(
        capsys, "device", "create", str(dev), "--image", str(setup["image"]), "--keys",
        str(setup["keys"]), "--tpm", "swtpm",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = _run(capsys, "device", "boot", "--json", str(dev))
    assert code == 0, err
    first = json.loads(out)
    assert first["first_boot"] and first["reached"] == "running"
    code, out, err = _run(capsys, "device", "boot", "--json", str(dev))
    assert code == 0, err
    second = json.loads(out)
    assert not second["first_boot"] and second["pcrs"] == first["pcrs"]


def test_swtpm_device_eventlog_check_and_provision_use_its_own_tpm(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a boot, ``eventlog --check`` and ``device provision`` (no --tpm) reach the
    swtpm that measured the boot, with the PCRs it measured (not a fresh software TPM)."""
    need_tool("swtpm")
    need_module("tpm2_pytss", "tpm2-pytss")
    from bastion.cli._device_fleet import _device_tpm
    from bastion.tpm.base import HashAlg, PcrSelection

    dev = tmp_path / "sw"
    capsys.readouterr()
    code, _, err = _run(
        capsys, "device", "create", str(dev), "--image", str(setup["image"]), "--keys",
        str(setup["keys"]), "--tpm", "swtpm",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = _run(capsys, "device", "boot", str(dev))
    assert code == 0, err
    code, out, err = _run(capsys, "device", "eventlog", "--check", "--json", str(dev))
    assert code == 0, err
    log = json.loads(out)
    assert log["tpm_matches"] is True
    replay = {int(k): bytes.fromhex(v) for k, v in log["replay"].items()}
    with _device_tpm(dev, None) as tpm:  # what `device provision DEV` enrols with
        assert type(tpm).__name__ == "TssTpm"
        assert tpm.pcr_read(PcrSelection(HashAlg.SHA256, tuple(sorted(replay)))) == replay
    assert not (dev / "tpm.state").exists()  # no stray software TPM was made
    code, _, err = _run(capsys, "device", "eventlog", "--check", str(dev))
    assert code == 0, err  # checking did not reset the TPM
