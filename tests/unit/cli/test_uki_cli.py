"""``bastion uki build|sign|verify``: output, exit codes, one-line errors."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from tests.pebuild import make_pe
from tests.unit.trust.conftest import make_key

from bastion.cli.main import main
from bastion.formats.uki import uki_sections
from bastion.trust.keys import private_key_to_pem, public_key_to_pem
from bastion.trust.pcr11 import DEFAULT_PHASES, pcr11_policy, predict_pcr11


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _material(folder: Path, key_alg: str, n: int) -> tuple[Path, Path]:
    key = make_key(key_alg, n)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cli {key_alg} {n}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_path, cert_path = folder / f"{key_alg}{n}.key", folder / f"{key_alg}{n}.crt"
    key_path.write_bytes(private_key_to_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.mark.parametrize("key_alg", ["rsa-2048", "ecdsa-p256"])
def test_build_sign_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_alg: str
) -> None:
    stub = tmp_path / "stub.efi"
    stub.write_bytes(make_pe(spare_headers=8))
    (tmp_path / "k").write_bytes(make_pe())
    (tmp_path / "c").write_bytes(b"quiet\0")
    key, cert = _material(tmp_path, key_alg, 0)
    _, other = _material(tmp_path, key_alg, 1)
    uki = str(tmp_path / "uki.efi")
    code, out, _ = _run(
        capsys,
        "uki",
        "build",
        "--stub",
        str(stub),
        "--linux",
        str(tmp_path / "k"),
        "--cmdline",
        str(tmp_path / "c"),
        "-o",
        uki,
        "--json",
    )
    assert code == 0 and json.loads(out)["sections"] == {".cmdline": 6, ".linux": len(make_pe())}
    code, _, _ = _run(capsys, "uki", "sign", "--key", str(key), "--cert", str(cert), uki)
    assert code == 0
    code, out, _ = _run(capsys, "uki", "verify", "--db", str(cert), uki, "--json")
    assert code == 0 and json.loads(out)["index"] == 0
    code, _, err = _run(capsys, "uki", "verify", "--db", str(other), uki)
    assert code == 2 and "does not chain" in err
    code, _, err = _run(capsys, "uki", "verify", "--db", str(cert), str(stub))
    assert code == 2 and "not signed" in err
    (tmp_path / "junk").write_bytes(b"nope")
    code, _, err = _run(capsys, "uki", "verify", "--db", str(cert), str(tmp_path / "junk"))
    assert code == 3 and "MZ" in err


def test_build_with_pcr_key_and_pcrs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stub = tmp_path / "stub.efi"
    stub.write_bytes(make_pe(spare_headers=8))
    (tmp_path / "k").write_bytes(b"MZ kernel")
    key, _ = _material(tmp_path, "rsa-2048", 0)
    uki = str(tmp_path / "uki.efi")
    code, out, _ = _run(
        capsys,
        "uki",
        "build",
        "--stub",
        str(stub),
        "--linux",
        str(tmp_path / "k"),
        "--pcr-key",
        str(key),
        "--phase",
        "enter-initrd",
        "-o",
        uki,
        "--json",
    )
    assert code == 0 and set(json.loads(out)["sections"]) == {".linux", ".pcrpkey", ".pcrsig"}
    code, out, _ = _run(capsys, "uki", "pcrs", uki, "--phase", "enter-initrd", "--json")
    assert code == 0
    predicted = json.loads(out)["phases"]["enter-initrd"]
    sections = uki_sections(Path(uki).read_bytes())
    assert predicted == predict_pcr11(sections, "enter-initrd").hex()
    entries = json.loads(sections[".pcrsig"])["sha256"]
    assert len(entries) == 1
    assert entries[0]["pol"] == pcr11_policy(bytes.fromhex(predicted)).hex()


def test_verify_checks_pcrsig(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stub = tmp_path / "stub.efi"
    stub.write_bytes(make_pe(spare_headers=8))
    (tmp_path / "k").write_bytes(b"MZ kernel")
    key, cert = _material(tmp_path, "rsa-2048", 0)
    pub = tmp_path / "pcr.pub"
    pub.write_bytes(public_key_to_pem(make_key("rsa-2048", 0).public_key()))
    uki = str(tmp_path / "uki.efi")
    argv = ["uki", "build", "--stub", str(stub), "--linux", str(tmp_path / "k"), "-o", uki]
    assert _run(capsys, *argv, "--pcr-key", str(key))[0] == 0
    assert _run(capsys, "uki", "sign", "--key", str(key), "--cert", str(cert), uki)[0] == 0
    code, out, _ = _run(
        capsys, "uki", "verify", "--db", str(cert), "--pcr-pubkey", str(pub), uki, "--json"
    )
    assert code == 0 and json.loads(out)["pcrsig_phases"] == list(DEFAULT_PHASES)
    other_pub = tmp_path / "other.pub"
    other_pub.write_bytes(public_key_to_pem(make_key("rsa-2048", 1).public_key()))
    code, _, err = _run(
        capsys, "uki", "verify", "--db", str(cert), "--pcr-pubkey", str(other_pub), uki
    )
    assert code == 2 and ".pcrsig" in err
