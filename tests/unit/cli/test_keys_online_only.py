"""Item 16: builds and devices need only online keys; an encrypted key set signs everywhere.

``keys init`` names the platform root and fleet root CA keys as the ones to keep
offline. With those files moved away, ``image build``, ``device create`` and a boot
still work. A key set made with a passphrase works in every command that signs, with
the passphrase from ``--passphrase-env`` or from a terminal prompt.
"""

from __future__ import annotations

import getpass
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.bootkit import KERNEL, make_tree
from tests.conftest import need_tool
from tests.pebuild import make_pe

from bastion.cli.main import main
from bastion.trust.keyset import KeySet

PASS = "correct horse battery staple"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_tool("mkfs.ext4")
    base = tmp_path_factory.mktemp("online")
    keys = base / "keys"
    assert main(["keys", "init", "--json", str(keys)]) == 0
    (base / "vmlinuz").write_bytes(KERNEL)
    make_tree(base / "tree")
    return {"base": base, "keys": keys}


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_tool("mkfs.ext4")
    base = tmp_path_factory.mktemp("enc")
    keys = base / "keys"
    mp = pytest.MonkeyPatch()
    mp.setenv("KS_PASS", PASS)
    try:
        assert main(["keys", "init", "--passphrase-env", "KS_PASS", str(keys)]) == 0
    finally:
        mp.undo()
    (base / "vmlinuz").write_bytes(KERNEL)
    make_tree(base / "tree")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")]))
        .sign(key, hashes.SHA256())
    )
    (base / "dev.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    (base / "mod.ko").write_bytes(b"\x7fELF module " * 64)
    (base / "payload.txt").write_bytes(b"hello\n")
    (base / "stub.efi").write_bytes(make_pe(spare_headers=8))
    (base / "kernel.efi").write_bytes(make_pe())
    return {"base": base, "keys": keys}


def _build_args(base: Path, keys: Path, out: Path) -> list[str]:
    return [
        "image", "build",
        "--rootfs", str(base / "tree"), "--kernel", str(base / "vmlinuz"),
        "--version", "1.0", "--security-version", "1", "--keys", str(keys),
        "--data-size", "24", "-o", str(out),
    ]  # fmt: skip


def test_keys_init_names_the_offline_keys(
    plain: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "keys", "show", "--json", str(plain["keys"]))
    assert code == 0
    assert sorted(json.loads(out)["keep_offline"]) == [
        "fleet-root-ca.key.pem",
        "platform-root.key.pem",
        "secureboot-kek.key.pem",
        "secureboot-pk.key.pem",
    ]


def test_build_create_boot_without_the_offline_keys(
    plain: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(plain["keys"], keys)
    vault = tmp_path / "vault"
    vault.mkdir()
    for name in KeySet.load(keys).offline_files():
        shutil.move(keys / name, vault / name)
    assert not (keys / "platform-root.key.pem").exists()
    disk = tmp_path / "disk.img"
    code, _, err = _run(capsys, *_build_args(plain["base"], keys, disk))
    assert code == 0, err
    code, out, err = _run(capsys, "image", "verify", "--quick", str(disk), "--keys", str(keys))
    assert code == 0, err
    dev = tmp_path / "dev"
    code, out, err = _run(
        capsys, "device", "create", str(dev), "--image", str(disk), "--keys", str(keys)
    )
    assert code == 0, err
    code, out, err = _run(capsys, "device", "boot", "--json", str(dev))
    assert code == 0, err
    assert json.loads(out)["reached"] == "running"


def test_a_forged_profile_delegation_stops_the_boot(
    plain: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ROM checks the delegation with the fused root: another root's is refused."""
    other = tmp_path / "other"
    assert main(["keys", "init", str(other)]) == 0
    disk = tmp_path / "disk.img"
    assert main(_build_args(plain["base"], plain["keys"], disk)) == 0
    dev = tmp_path / "dev"
    assert (
        main(["device", "create", str(dev), "--image", str(disk), "--keys", str(plain["keys"])])
        == 0
    )
    shutil.copy(other / "profile-delegation.json", dev / "profile-delegation.json")
    capsys.readouterr()
    code, _, err = _run(capsys, "device", "boot", str(dev))
    assert code == 2
    assert "profile delegation" in err and "rom" in err


# --- encrypted key set: every signing command, passphrase from env or a prompt ---------


def _image_build(s: dict[str, Path], out: Path) -> list[str]:
    return _build_args(s["base"], s["keys"], out / "disk.img")


def _device_create(s: dict[str, Path], out: Path) -> list[str]:
    disk = s["base"] / "shared-disk.img"
    if not disk.exists():
        mp = pytest.MonkeyPatch()
        mp.setenv("KS_PASS", PASS)
        try:
            assert (
                main([*_build_args(s["base"], s["keys"], disk), "--passphrase-env", "KS_PASS"]) == 0
            )
        finally:
            mp.undo()
    return ["device", "create", str(out / "dev"), "--image", str(disk), "--keys", str(s["keys"])]


def _pki_issue(s: dict[str, Path], out: Path) -> list[str]:
    return [
        "pki", "issue", "--keyset", str(s["keys"]), "--csr", str(s["base"] / "dev.csr"),
        "--device-id", "dev-1", "-o", str(out / "dev.crt"),
    ]  # fmt: skip


def _pki_crl(s: dict[str, Path], out: Path) -> list[str]:
    return ["pki", "crl", "--keyset", str(s["keys"]), "--state", str(out / "state.json"),
            "-o", str(out / "crl.pem")]  # fmt: skip


def _sign(s: dict[str, Path], out: Path) -> list[str]:
    return ["sign", "--key", f"file:{s['keys'] / 'image.key.pem'}", "--type", "text/plain",
            str(s["base"] / "payload.txt"), "-o", str(out / "env.json")]  # fmt: skip


def _module_sign(s: dict[str, Path], out: Path) -> list[str]:
    return ["module", "sign", "--key", str(s["keys"] / "module.key.pem"), "--cert",
            str(s["keys"] / "module.crt.pem"), str(s["base"] / "mod.ko"),
            "-o", str(out / "mod.ko")]  # fmt: skip


def _uki_sign(s: dict[str, Path], out: Path) -> list[str]:
    return ["uki", "sign", "--key", str(s["keys"] / "verity.key.pem"), "--cert",
            str(s["keys"] / "verity.crt.pem"), str(s["base"] / "kernel.efi"),
            "-o", str(out / "signed.efi")]  # fmt: skip


def _uki_build(s: dict[str, Path], out: Path) -> list[str]:
    return ["uki", "build", "--stub", str(s["base"] / "stub.efi"), "--linux",
            str(s["base"] / "kernel.efi"), "--pcr-key", str(s["keys"] / "verity.key.pem"),
            "-o", str(out / "uki.efi")]  # fmt: skip


def _keys_id(s: dict[str, Path], out: Path) -> list[str]:
    return ["keys", "id", str(s["keys"] / "boot.key.pem")]


SIGNING: dict[str, Callable[[dict[str, Path], Path], list[str]]] = {
    "keys id": _keys_id,  # opens a private key, like every signing command
    "uki sign": _uki_sign,
    "uki build --pcr-key": _uki_build,
    "image build": _image_build,
    "device create": _device_create,
    "pki issue": _pki_issue,
    "pki crl": _pki_crl,
    "sign": _sign,
    "module sign": _module_sign,
}


@pytest.mark.parametrize("command", sorted(SIGNING))
def test_encrypted_key_set_passphrase_from_env(
    command: str,
    encrypted: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = SIGNING[command](encrypted, tmp_path)
    monkeypatch.setenv("KS_PASS", PASS)
    code, _, err = _run(capsys, *argv, "--passphrase-env", "KS_PASS")
    assert code == 0, err


class _Tty:
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("command", sorted(SIGNING))
def test_encrypted_key_set_passphrase_from_a_prompt(
    command: str,
    encrypted: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = SIGNING[command](encrypted, tmp_path)
    asked: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return PASS

    monkeypatch.setattr(sys, "stdin", _Tty())
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    assert len(asked) == 1  # asked once, however many keys the command opens


@pytest.mark.parametrize("command", sorted(SIGNING))
def test_encrypted_key_set_without_a_passphrase_is_refused(
    command: str,
    encrypted: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = SIGNING[command](encrypted, tmp_path)
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115 - not a terminal
    monkeypatch.setenv("KS_BAD", "wrong passphrase")
    code, _, err = _run(capsys, *argv)
    assert code == 4 and err.count("\n") == 1 and "is encrypted" in err and ".key.pem" in err
    code, _, err = _run(capsys, *argv, "--passphrase-env", "KS_BAD")
    assert code == 4 and "wrong passphrase" in err and ".key.pem" in err
