"""server/enrollment/evidence: verified evidence and the negative table."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bastion.errors import (
    BastionError,
    DigestMismatchError,
    FormatError,
    PolicyError,
    SignatureError,
    VerificationError,
)
from bastion.formats.tpm2 import ObjectAttr, Scheme
from bastion.server.enrollment.evidence import verify_evidence

from .tpm_evidence import AK_ATTRS, KEY_ATTRS, Device, ecc_public, rsa_ek_public

A = ObjectAttr


@pytest.fixture(scope="module")
def ek() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def test_good_evidence(ek: rsa.RSAPrivateKey) -> None:
    dev = Device.new(ek)
    ev = dev.evidence()
    out = verify_evidence(ev)
    assert out.ek_sha256 == hashlib.sha256(ev.ek_public).hexdigest()
    assert out.ak_name == ecc_public(dev.ak, AK_ATTRS).name
    assert out.csr.subject.rfc4514_string() == "CN=serial-0001"


def _flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


OTHER = ec.generate_private_key(ec.SECP256R1())

CASES = [
    # (case, overrides builder, expected error)
    ("CSR key not certified by the AK", lambda d: {"csr_der": d.csr(OTHER)}, VerificationError),
    (
        "certify names another key",
        lambda d: {"certified_name": ecc_public(OTHER, KEY_ATTRS).name},
        DigestMismatchError,
    ),
    ("certify for another CSR", lambda d: {"qualifying": b"\x00" * 32}, DigestMismatchError),
    ("certify signed by another key", lambda d: {"attest_signer": OTHER}, SignatureError),
    (
        "attest bit flipped",
        lambda d: {"certify_attest": _flip(d.evidence().certify_attest, 40)},
        SignatureError,
    ),
    (
        "signature bit flipped",
        lambda d: {"certify_signature": _flip(d.evidence().certify_signature, 10)},
        SignatureError,
    ),
    (
        "CSR signature bit flipped",
        lambda d: {"csr_der": _flip(d.csr(), len(d.csr()) - 3)},
        SignatureError,
    ),
    ("CSR garbage", lambda d: {"csr_der": b"\x30\x03\x02\x01\x00"}, FormatError),
    ("EK truncated", lambda d: {"ek_public": rsa_ek_public(d.ek).to_bytes()[:-5]}, FormatError),
    (
        "AK truncated",
        lambda d: {"ak_public": ecc_public(d.ak, AK_ATTRS).to_bytes()[:-1]},
        FormatError,
    ),
    (
        "EK is a signing key",
        lambda d: {"ek_public": rsa_ek_public(d.ek, 0x000300B2 | A.SIGN_ENCRYPT).to_bytes()},
        PolicyError,
    ),
    (
        "EK is not a storage key (no AES)",
        lambda d: {"ek_public": ecc_public(OTHER, 0x000300B2, Scheme()).to_bytes()},
        PolicyError,
    ),
    (
        "EK not restricted",
        lambda d: {"ek_public": rsa_ek_public(d.ek, 0x000300B2 & ~A.RESTRICTED).to_bytes()},
        PolicyError,
    ),
    (
        "AK not restricted",
        lambda d: {"ak_public_obj": ecc_public(d.ak, AK_ATTRS & ~A.RESTRICTED)},
        PolicyError,
    ),
    (
        "AK not fixedTPM",
        lambda d: {"ak_public_obj": ecc_public(d.ak, AK_ATTRS & ~A.FIXED_TPM)},
        PolicyError,
    ),
    (
        "identity key exportable (not fixedTPM)",
        lambda d: {"key_public_obj": ecc_public(d.key, KEY_ATTRS & ~A.FIXED_TPM)},
        PolicyError,
    ),
    (
        "identity key imported (not sensitiveDataOrigin)",
        lambda d: {"key_public_obj": ecc_public(d.key, KEY_ATTRS & ~A.SENSITIVE_DATA_ORIGIN)},
        PolicyError,
    ),
    (
        "identity key is a decrypt key",
        lambda d: {"key_public_obj": ecc_public(d.key, KEY_ATTRS | A.DECRYPT)},
        PolicyError,
    ),
]


@pytest.mark.parametrize(("case", "build", "error"), CASES, ids=[c[0] for c in CASES])
def test_evidence_refused(case: str, build, error, ek: rsa.RSAPrivateKey) -> None:  # type: ignore[no-untyped-def]
    dev = Device.new(ek)
    overrides = build(dev)
    ev = (
        dev.evidence(**overrides)
        if not any(k in overrides for k in ("certify_attest", "certify_signature"))
        else dataclasses.replace(dev.evidence(), **overrides)
    )
    with pytest.raises(error):
        verify_evidence(ev)


def test_every_refusal_is_a_bastion_error(ek: rsa.RSAPrivateKey) -> None:
    dev = Device.new(ek)
    good = dev.evidence()
    for i in range(0, len(good.certify_attest), 7):
        with pytest.raises(BastionError):
            verify_evidence(dataclasses.replace(good, certify_attest=_flip(good.certify_attest, i)))


def test_ecc_ek_storage_key_accepted_and_credential_made(ek: rsa.RSAPrivateKey) -> None:
    from bastion.formats.tpm2 import Alg, Curve, EccParms, Public, SymDef
    from bastion.tpm.quote import make_credential

    dev = Device.new(ek)
    ecc = ecc_public(ec.generate_private_key(ec.SECP256R1()), 0x000300B2, Scheme())
    ecc_ek = Public(
        ecc.type,
        ecc.name_alg,
        ecc.attributes,
        ecc.auth_policy,
        EccParms(SymDef(Alg.AES, 128, Alg.CFB), Scheme(), Curve.NIST_P256),
        ecc.unique,
    ).to_bytes()
    out = verify_evidence(dev.evidence(ek_public=ecc_ek))
    blob, secret = make_credential(ecc_ek, out.ak_name, b"\x01" * 32)
    assert blob and secret
