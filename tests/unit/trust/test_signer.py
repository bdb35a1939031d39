"""Signer / Verifier over every scheme, with a negative table."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from bastion.errors import ConfigError, SignatureError
from bastion.trust.signer import SignatureScheme, SoftwareSigner, Verifier, key_id

CASES = [
    ("ed25519", SignatureScheme.ED25519),
    ("ecdsa-p256", SignatureScheme.ECDSA_P256_SHA256),
    ("ecdsa-p384", SignatureScheme.ECDSA_P384_SHA384),
    ("rsa-2048", SignatureScheme.RSA_PSS_SHA256),
    ("rsa-2048", SignatureScheme.RSA_PKCS1V15_SHA256),
    ("rsa-2048", SignatureScheme.RSA_PKCS1V15_SHA384),
    ("rsa-2048", SignatureScheme.RSA_PKCS1V15_SHA512),
]


@pytest.mark.parametrize(("alg", "scheme"), CASES)
def test_sign_verify_round_trip(keygen, alg: str, scheme: SignatureScheme) -> None:
    key = keygen(alg)
    signer = SoftwareSigner(key, scheme)
    sig = signer.sign(b"hello")
    verifier = Verifier.of(signer.public_key(), scheme)
    verifier.verify(b"hello", sig)
    assert verifier.key_id == signer.key_id


def test_default_schemes(keygen) -> None:
    assert SoftwareSigner(keygen("ed25519")).scheme is SignatureScheme.ED25519
    assert SoftwareSigner(keygen("ecdsa-p256")).scheme is SignatureScheme.ECDSA_P256_SHA256
    assert SoftwareSigner(keygen("ecdsa-p384")).scheme is SignatureScheme.ECDSA_P384_SHA384
    assert SoftwareSigner(keygen("rsa-2048")).scheme is SignatureScheme.RSA_PSS_SHA256


def test_key_id_is_sha256_of_spki(keygen) -> None:
    pub = keygen("ecdsa-p256").public_key()
    spki = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_id(pub) == hashlib.sha256(spki).hexdigest()
    assert len(key_id(pub)) == 64


def _flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index % len(b)] ^= 0x01
    return bytes(b)


NEGATIVE = [
    "wrong key",
    "flipped sig first",
    "flipped sig last",
    "flipped data",
    "truncated",
    "empty",
    "extra byte",
]


@pytest.mark.parametrize(("alg", "scheme"), CASES)
@pytest.mark.parametrize("case", NEGATIVE)
def test_verify_refuses(keygen, alg: str, scheme: SignatureScheme, case: str) -> None:
    signer = SoftwareSigner(keygen(alg), scheme)
    data = b"the signed message"
    sig = signer.sign(data)
    verifier = Verifier.of(signer.public_key(), scheme)
    if case == "wrong key":
        verifier = Verifier.of(keygen(alg, 1).public_key(), scheme)
    elif case == "flipped sig first":
        sig = _flip(sig, 0 if alg == "ed25519" or alg.startswith("rsa") else 8)
    elif case == "flipped sig last":
        sig = _flip(sig, -1)
    elif case == "flipped data":
        data = _flip(data, 3)
    elif case == "truncated":
        sig = sig[:-1]
    elif case == "empty":
        sig = b""
    elif case == "extra byte":
        sig += b"\0"
    with pytest.raises(SignatureError):
        verifier.verify(data, sig)


def test_pss_and_pkcs1_are_not_interchangeable(keygen) -> None:
    key = keygen("rsa-2048")
    sig = SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256).sign(b"m")
    with pytest.raises(SignatureError):
        Verifier.of(key.public_key(), SignatureScheme.RSA_PSS_SHA256).verify(b"m", sig)


@pytest.mark.parametrize(
    ("alg", "scheme"),
    [
        ("ed25519", SignatureScheme.ECDSA_P256_SHA256),
        ("ecdsa-p256", SignatureScheme.ECDSA_P384_SHA384),
        ("ecdsa-p384", SignatureScheme.ED25519),
        ("rsa-2048", SignatureScheme.ECDSA_P256_SHA256),
        ("ecdsa-p256", SignatureScheme.RSA_PSS_SHA256),
    ],
)
def test_scheme_must_fit_key(keygen, alg: str, scheme: SignatureScheme) -> None:
    with pytest.raises(ConfigError):
        SoftwareSigner(keygen(alg), scheme)
    with pytest.raises(ConfigError):
        Verifier.of(keygen(alg).public_key(), scheme)


def test_signer_repr_hides_key(keygen) -> None:
    signer = SoftwareSigner(keygen("ed25519"))
    assert "PRIVATE" not in repr(signer)
    assert not hasattr(signer, "__dict__")
