"""``bastion module sign|verify`` with EC keys and subjectKeyIdentifier signers."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.cli.main import main
from bastion.formats.modsig import verify_module


def _material(folder: Path, curve: ec.EllipticCurve) -> x509.Certificate:
    key = ec.generate_private_key(curve)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "module ec")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(5)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    (folder / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "m.ko").write_bytes(b"\x7fELF module bytes")
    return cert


@pytest.mark.parametrize(("curve", "h"), [(ec.SECP256R1(), "sha256"), (ec.SECP384R1(), "sha384")])
def test_sign_and_verify_ec_with_key_id(tmp_path: Path, capsys, curve, h: str) -> None:  # type: ignore[no-untyped-def]
    cert = _material(tmp_path, curve)
    key, crt, mod = (str(tmp_path / n) for n in ("k.pem", "c.pem", "m.ko"))
    out = str(tmp_path / "m.signed.ko")
    args = ["module", "sign", "--key", f"file:{key}", "--cert", crt, "--hash", h, "--key-id"]
    assert main([*args, mod, "-o", out]) == 0
    assert verify_module(Path(out).read_bytes(), cert).cms().subject_key_id
    capsys.readouterr()
    assert main(["module", "verify", "--cert", crt, out, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["hash"], doc["key_algorithm"]) == (True, h, "ecdsa")
    assert (
        doc["key_id"]
        == cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    )


def test_ec_curve_and_hash_mismatch_is_a_usage_error(tmp_path: Path) -> None:
    _material(tmp_path, ec.SECP256R1())
    key, crt, mod = (str(tmp_path / n) for n in ("k.pem", "c.pem", "m.ko"))
    code = main(["module", "sign", "--key", f"file:{key}", "--cert", crt, "--hash", "sha384", mod])
    assert code == 9
