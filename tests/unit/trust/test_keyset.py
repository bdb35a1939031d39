"""The product key set: creation, manifest, loading by role, tamper checks."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from bastion.errors import AuthError, ConflictError, FormatError, NotFoundError, VerificationError
from bastion.formats.modsig import sign_module, verify_module
from bastion.trust import pki
from bastion.trust.envelope import sign_envelope, verify_envelope
from bastion.trust.keys import KeyAlgorithm, public_key_to_pem
from bastion.trust.keyset import ROLES, KeySet, create_keyset
from bastion.trust.signer import SignatureScheme


@pytest.fixture(scope="module")
def keyset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ks") / "keys"
    create_keyset(folder, product="acme", rsa_algorithm=KeyAlgorithm.RSA_2048)
    return folder


def test_layout_and_modes(keyset_dir: Path) -> None:
    assert stat.S_IMODE(keyset_dir.stat().st_mode) == 0o700
    doc = json.loads((keyset_dir / "keys.json").read_text())
    names = [e["name"] for e in doc["keys"]]
    assert names == [
        "platform-root",
        "boot",
        "image",
        "update-1",
        "update-2",
        "module",
        "verity",
        "fleet-root-ca",
        "fleet-ca",
        "secureboot-pk",
        "secureboot-kek",
        "secureboot-db",
        "pcr",
    ]
    for entry in doc["keys"]:
        mode = stat.S_IMODE((keyset_dir / entry["private_key"]).stat().st_mode)
        assert mode == 0o600, entry["name"]
        assert len(entry["key_id"]) == 64
    offline = {e["name"] for e in doc["keys"] if e["offline"]}
    assert offline == {"platform-root", "fleet-root-ca", "secureboot-pk", "secureboot-kek"}
    assert (keyset_dir / "module.crt.der").exists()
    assert {s.role for s in ROLES} == {e["role"] for e in doc["keys"]}


def test_load_and_accessors(keyset_dir: Path) -> None:
    ks = KeySet.load(keyset_dir)
    assert ks.product == "acme"
    spki = ks.public_key("platform-root").public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ks.platform_root_hash() == hashlib.sha256(spki).digest()
    doc = json.loads((keyset_dir / "keys.json").read_text())
    assert doc["platform_root_hash"] == ks.platform_root_hash().hex()
    assert ks.signer("boot").key_id == ks.entry("boot").key_id
    assert len(ks.signers("update")) == 2
    env = sign_envelope("t", b"p", ks.signers("update"))
    assert verify_envelope(env, ks.verifiers("update"), payload_type="t", threshold=2) == b"p"
    assert ks.offline_files() == [
        "platform-root.key.pem",
        "fleet-root-ca.key.pem",
        "secureboot-pk.key.pem",
        "secureboot-kek.key.pem",
    ]


def test_fleet_cas_chain(keyset_dir: Path) -> None:
    ks = KeySet.load(keyset_dir)
    root = ks.certificate("fleet-root-ca")
    fleet_ca = ks.certificate_authority("fleet-ca")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(k, hashes.SHA256())
    )
    cert = pki.issue_device_certificate(
        fleet_ca, csr.public_bytes(serialization.Encoding.PEM), "d1"
    )
    chain = pki.verify_chain(cert, roots=[root], intermediates=[fleet_ca.certificate])
    assert len(chain.chain) == 3


def test_module_key_signs_modules(keyset_dir: Path) -> None:
    ks = KeySet.load(keyset_dir)
    signer = ks.signer("module", scheme=SignatureScheme.RSA_PKCS1V15_SHA256)
    cert = ks.certificate("module")
    signed = sign_module(b"\x7fELF" + b"\0" * 100, cert, signer.sign)
    verify_module(signed, cert)


def test_refuses_to_overwrite(keyset_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConflictError):
        create_keyset(keyset_dir)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x").write_text("x")
    with pytest.raises(ConflictError):
        create_keyset(tmp_path / "f")


def test_unknown_role(keyset_dir: Path) -> None:
    ks = KeySet.load(keyset_dir)
    with pytest.raises(NotFoundError):
        ks.signer("nope")
    with pytest.raises(NotFoundError):
        ks.signer("update", 2)
    with pytest.raises(NotFoundError):
        ks.certificate("boot")


@pytest.mark.parametrize(
    "case", ["swapped public key", "key id edited", "path escape", "bad format", "missing file"]
)
def test_tampered_set_refused(keyset_dir: Path, tmp_path: Path, case: str) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(keyset_dir, copy)
    doc = json.loads((copy / "keys.json").read_text())
    error: type[Exception] = VerificationError
    if case == "swapped public key":
        (copy / "boot.pub.pem").write_bytes((copy / "image.pub.pem").read_bytes())
    elif case == "key id edited":
        doc["keys"][1]["key_id"] = "00" * 32
    elif case == "path escape":
        doc["keys"][1]["public_key"] = "../../etc/passwd"
        error = FormatError
    elif case == "bad format":
        doc["format"] = "other"
        error = FormatError
    elif case == "missing file":
        (copy / "boot.pub.pem").unlink()
        error = NotFoundError
    (copy / "keys.json").write_text(json.dumps(doc))
    with pytest.raises(error):
        KeySet.load(copy)


def test_encrypted_keyset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.trust import keyset as mod

    monkeypatch.setattr(
        mod, "ROLES", tuple(r for r in ROLES if r.role in ("platform-root", "boot"))
    )
    create_keyset(tmp_path / "k", passphrase=b"s3cret")
    assert b"ENCRYPTED" in (tmp_path / "k" / "boot.key.pem").read_bytes()
    with pytest.raises(AuthError):
        KeySet.load(tmp_path / "k").signer("boot")
    ks = KeySet.load(tmp_path / "k", passphrase=lambda: b"s3cret")
    assert ks.signer("boot").key_id == ks.entry("boot").key_id
    assert (tmp_path / "k" / "boot.pub.pem").read_bytes() == public_key_to_pem(
        ks.public_key("boot")
    )


def test_swapped_private_key_refused(keyset_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(keyset_dir, copy)
    (copy / "boot.key.pem").write_bytes((copy / "image.key.pem").read_bytes())
    ks = KeySet.load(copy)
    with pytest.raises(VerificationError):
        ks.signer("boot")


@pytest.mark.parametrize("product", ["", "x" * 41, "bad\nname"])
def test_bad_product_name(tmp_path: Path, product: str) -> None:
    from bastion.errors import ConfigError

    with pytest.raises(ConfigError):
        create_keyset(tmp_path / "k", product=product)
    assert not (tmp_path / "k").exists()
