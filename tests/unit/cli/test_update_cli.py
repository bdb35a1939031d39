"""``bastion update``: configure, check, install, reboot, settle, status (sim device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests import updatekit as uk

from bastion.cli.main import main
from bastion.device.platform.sim import SimPlatform
from bastion.errors import NotFoundError
from bastion.tpm.fuses import TpmFuseBank


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    assert main([*argv, "--json"]) == 0
    doc: dict = json.loads(capsys.readouterr().out)  # type: ignore[type-arg]
    return doc


def test_update_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = uk.rootfs_blocks(1, 32)
    a = uk.make_release(tmp_path / "rel", "1.0", 1, b"".join(blocks))
    blocks[3] = b"z" * uk.BLOCK
    b = uk.make_release(tmp_path / "rel", "1.1", 2, b"".join(blocks))
    dev = uk.make_device(tmp_path / "dev", a)
    ca = tmp_path / "ca.pem"
    uk.KEYS.write(tmp_path)
    d = str(dev.folder)
    health = tmp_path / "health.json"
    health.write_text('{"required": [{"command": ["true"]}]}')
    conf = _json(
        capsys,
        "update",
        "configure",
        d,
        "--product",
        uk.PRODUCT,
        "--hardware",
        uk.HARDWARE,
        "--health",
        str(health),
    )
    assert conf["health"]["required"][0]["command"] == ["true"]
    checked = _json(capsys, "update", "check", d, str(b.bundle), "--keyring", str(ca))
    assert checked["target_slot"] == "b" and checked["svn"] == 2
    done = _json(capsys, "update", "install", d, str(b.bundle), "--keyring", str(ca))
    assert done["blocks_downloaded"] == 1 and done["entry"] == "bastion-2-b+3-0.efi"
    assert _json(capsys, "update", "reboot", d) == {
        "slot": "b",
        "entry": "bastion-2-b",
        "trial": True,
    }
    settled = _json(capsys, "update", "settle", d)
    assert settled["action"] == "committed"
    status = _json(capsys, "update", "status", d)
    assert status["fuse_counter"] == 2
    assert status["slots"]["b"]["state"] == "committed"
    assert main(["update", "status", d]) == 0
    assert "slot b: 1.1 svn 2 committed" in capsys.readouterr().out


def test_update_refusals_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = uk.make_release(tmp_path / "rel", "1.0", 1, b"".join(uk.rootfs_blocks(1, 8)))
    old = uk.make_release(tmp_path / "rel", "0.5", 0, b"".join(uk.rootfs_blocks(2, 8)))
    dev = uk.make_device(tmp_path / "dev", a)
    uk.KEYS.write(tmp_path)
    args = ["update", "install", str(dev.folder), str(old.bundle), "--keyring"]
    assert main([*args, str(tmp_path / "ca.pem")]) == 2  # RollbackError
    assert "below the fuse counter" in capsys.readouterr().err
    assert main(["update", "status", str(tmp_path / "nowhere")]) == 5


def _tpm_counter(dev: Path) -> int:
    with SimPlatform(dev).fuse_tpm() as tpm:
        assert tpm is not None
        return TpmFuseBank(tpm).counter()


def test_update_commands_tpm_fuses_refused_without_the_tpm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = uk.make_release(tmp_path / "rel", "1.0", 1, b"".join(uk.rootfs_blocks(1, 8)))
    b = uk.make_release(tmp_path / "rel", "1.1", 2, b"".join(uk.rootfs_blocks(2, 8)))
    dev = uk.make_device(tmp_path / "dev", a, fuses="tpm")
    uk.KEYS.write(tmp_path)
    d = str(dev.folder)
    (dev.folder / "tpm.state").unlink()  # the TPM holding the fuses is gone
    records = dev.load("update-slots.json")
    for argv in (
        ["install", d, str(b.bundle), "--keyring", str(tmp_path / "ca.pem")],
        ["check", d, str(b.bundle), "--keyring", str(tmp_path / "ca.pem")],
        ["reboot", d],
        ["settle", d],
        ["status", d],
    ):
        assert main(["update", *argv]) == NotFoundError.exit_code, argv
        err = capsys.readouterr().err
        assert "keeps its fuses in its software TPM" in err and "tpm.state" in err, argv
    assert dev.load("update-slots.json") == records
    assert not (dev.folder / "tpm.state").exists() and not (dev.folder / "fuses").exists()


def test_update_commands_tpm_fuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = uk.rootfs_blocks(1, 32)
    a = uk.make_release(tmp_path / "rel", "1.0", 1, b"".join(blocks))
    blocks[3] = b"z" * uk.BLOCK
    b = uk.make_release(tmp_path / "rel", "1.1", 2, b"".join(blocks))
    old = uk.make_release(tmp_path / "rel", "0.5", 0, b"".join(uk.rootfs_blocks(2, 32)))
    dev = uk.make_device(tmp_path / "dev", a, fuses="tpm")
    uk.KEYS.write(tmp_path)
    d, ca = str(dev.folder), str(tmp_path / "ca.pem")
    assert main(["update", "install", d, str(old.bundle), "--keyring", ca]) == 2
    assert "below the fuse counter" in capsys.readouterr().err  # the TPM's counter, 1
    assert _json(capsys, "update", "check", d, str(b.bundle), "--keyring", ca)["svn"] == 2
    done = _json(capsys, "update", "install", d, str(b.bundle), "--keyring", ca)
    assert done["entry"] == "bastion-2-b+3-0.efi"
    assert _tpm_counter(dev.folder) == 1
    assert _json(capsys, "update", "reboot", d)["trial"] is True
    assert _json(capsys, "update", "status", d)["fuse_counter"] == 1  # not before commit
    assert _tpm_counter(dev.folder) == 1
    assert _json(capsys, "update", "settle", d)["action"] == "committed"
    assert _tpm_counter(dev.folder) == 2
    status = _json(capsys, "update", "status", d)
    assert status["fuse_counter"] == 2 and status["slots"]["b"]["state"] == "committed"
    assert not (dev.folder / "fuses").exists()  # the fuses were the TPM's, never a file


def test_update_commands_swtpm_fuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same flow on a device whose fuses are its managed swtpm's NV (as in QEMU)."""
    uk.need_tool("swtpm")
    a = uk.make_release(tmp_path / "rel", "1.0", 1, b"".join(uk.rootfs_blocks(1, 8)))
    b = uk.make_release(tmp_path / "rel", "1.1", 2, b"".join(uk.rootfs_blocks(2, 8)))
    dev = uk.make_device(tmp_path / "dev", a, fuses="tpm", tpm="swtpm")
    uk.KEYS.write(tmp_path)
    d, ca = str(dev.folder), str(tmp_path / "ca.pem")
    assert _json(capsys, "update", "install", d, str(b.bundle), "--keyring", ca)["svn"] == 2
    assert _json(capsys, "update", "reboot", d)["trial"] is True
    assert _json(capsys, "update", "status", d)["fuse_counter"] == 1
    assert _json(capsys, "update", "settle", d)["action"] == "committed"
    assert _tpm_counter(dev.folder) == 2
    assert not (dev.folder / "fuses").exists()
