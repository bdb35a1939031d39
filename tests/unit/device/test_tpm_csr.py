"""device/tpm_csr: hand-encoded PKCS#10 equals cryptography's TBS and verifies."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

from bastion.device.tpm_csr import build_csr, certification_request_info
from bastion.errors import ConfigError, SignatureError

SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "serial-0001")])


def _ec_signer(key: ec.EllipticCurvePrivateKey):  # type: ignore[no-untyped-def]
    return lambda d: key.sign(d, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def _rsa_signer(key: rsa.RSAPrivateKey):  # type: ignore[no-untyped-def]
    return lambda d: key.sign(d, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_info_equals_cryptography_tbs(kind: str) -> None:
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(65537, 2048)
    )
    reference = (
        x509.CertificateSigningRequestBuilder().subject_name(SUBJECT).sign(key, hashes.SHA256())
    )
    assert certification_request_info(SUBJECT, key.public_key()) == reference.tbs_certrequest_bytes


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_csr_verifies(kind: str) -> None:
    if kind == "ec":
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = ec.generate_private_key(
            ec.SECP256R1()
        )
        signer = _ec_signer(key)  # type: ignore[arg-type]
    else:
        key = rsa.generate_private_key(65537, 2048)
        signer = _rsa_signer(key)  # type: ignore[arg-type]
    der = build_csr(SUBJECT, key.public_key(), signer)
    csr = x509.load_der_x509_csr(der)
    assert csr.is_signature_valid
    assert csr.subject == SUBJECT
    assert csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_long_subject_uses_long_form_lengths() -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x" * 64)] * 4)
    key = ec.generate_private_key(ec.SECP256R1())
    der = build_csr(subject, key.public_key(), _ec_signer(key))
    assert x509.load_der_x509_csr(der).subject == subject


@pytest.mark.parametrize(
    "case",
    ["other key signs", "signs other digest", "garbage signature"],
)
def test_bad_signer_refused(case: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    signer = {
        "other key signs": _ec_signer(other),
        "signs other digest": lambda d: _ec_signer(key)(bytes(32)),
        "garbage signature": lambda d: bytes.fromhex("3006020101020101"),
    }[case]
    with pytest.raises(SignatureError):
        build_csr(SUBJECT, key.public_key(), signer)


def test_unsupported_key_type() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    with pytest.raises(ConfigError):
        build_csr(SUBJECT, ed25519.Ed25519PrivateKey.generate().public_key(), lambda d: b"")  # type: ignore[arg-type]
