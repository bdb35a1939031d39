"""``bastion release build`` / ``verify``: thin wrappers, JSON output, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.bundlekit import release_keys
from tests.conftest import need_tool

from bastion.cli.main import main

KEYS = release_keys()
OTHER = release_keys("other")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_tool("mksquashfs")
    ca, cert, key = KEYS.write(tmp_path)
    other = tmp_path / "o"
    other.mkdir()
    other_ca, _, _ = OTHER.write(other)
    root = tmp_path / "root.img"
    root.write_bytes(os.urandom(50_000))
    uki = tmp_path / "uki.efi"
    uki.write_bytes(os.urandom(9_000))
    out = tmp_path / "r.raucb"
    code, stdout, err = _run(
        capsys, "release", "build", "--root", str(root), "--uki", str(uki),
        "--compatible", "bastion-edge", "--version", "1.0.0", "--key", f"file:{key}",
        "--cert", str(cert), "--chain", str(ca), "-o", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    built = json.loads(stdout)
    assert built["compatible"] == "bastion-edge"
    assert [i["filename"] for i in built["images"]] == ["rootfs.img", "uki.efi"]
    assert built["bundle_size"] == out.stat().st_size
    code, stdout, err = _run(capsys, "release", "verify", "--keyring", str(ca), str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["version"] == "1.0.0"
    code, _, err = _run(capsys, "release", "verify", "--keyring", str(other_ca), str(out))
    assert code == 2
    assert "does not chain" in err
    data = bytearray(out.read_bytes())
    data[4096 + 1] ^= 0x80
    out.write_bytes(bytes(data))
    code, _, err = _run(capsys, "release", "verify", "--keyring", str(ca), str(out))
    assert code == 2
    assert "data block 1 is corrupted" in err


def test_build_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, cert, key = KEYS.write(tmp_path)
    code, _, err = _run(
        capsys, "release", "build", "--root", str(tmp_path / "nope"), "--compatible", "x",
        "--version", "1", "--key", f"file:{key}", "--cert", str(cert), "-o", "x.raucb",
    )  # fmt: skip
    assert code != 0
    assert "is not a file" in err


def test_build_carries_a_golden_statement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--golden FILE``: the statement goes into the bundle, ``verify`` shows it; one for
    another version or SVN is refused before anything is built (ADR 0037)."""
    from tests.attestkit import boot_events, golden_of

    from bastion.trust.golden import golden_digest, sign_golden
    from bastion.trust.keys import KeyAlgorithm, generate_private_key
    from bastion.trust.signer import SoftwareSigner

    need_tool("mksquashfs")
    ca, cert, key = KEYS.write(tmp_path)
    product = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
    golden = golden_of(boot_events(), svn=4, version="4.0.0")
    statement = tmp_path / "golden.dsse"
    statement.write_bytes(sign_golden(golden, product))
    root = tmp_path / "root.img"
    root.write_bytes(os.urandom(50_000))
    out = tmp_path / "r.raucb"
    base = [
        "release", "build", "--root", str(root), "--compatible", "bastion-edge",
        "--key", f"file:{key}", "--cert", str(cert), "--chain", str(ca), "-o", str(out),
        "--golden", str(statement), "--product", "edge", "--hardware", "pi4",
    ]  # fmt: skip
    for version, svn, needle in (("4.0.1", "4", "for version '4.0.0'"), ("4.0.0", "5", "is 5")):
        code, _, err = _run(capsys, *base, "--version", version, "--svn", svn)
        assert code != 0 and needle in err, err
        assert not out.exists()
    code, stdout, err = _run(capsys, *base, "--version", "4.0.0", "--svn", "4", "--json")
    assert code == 0, err
    built = json.loads(stdout)
    assert built["golden"]["sha256"] == golden_digest(statement.read_bytes())
    assert built["golden"]["pcrs"] == {str(i): v.hex() for i, v in sorted(golden.pcrs.items())}
    code, stdout, err = _run(capsys, "release", "verify", "--keyring", str(ca), str(out), "--json")
    assert code == 0, err
    shown = json.loads(stdout)["golden"]
    assert shown["version"] == "4.0.0" and shown["security_version"] == 4
    code, stdout, _ = _run(capsys, "release", "verify", "--keyring", str(ca), str(out))
    assert "golden values" in stdout and "version 4.0.0" in stdout
