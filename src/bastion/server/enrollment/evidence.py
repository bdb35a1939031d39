"""Verification of a device's enrolment evidence: pure, bytes in, raise on failure.

Given what a device sends to ``/v1/enroll/begin`` (EK, AK and identity-key
TPM2B_PUBLICs, a CSR, and the AK's TPM2_Certify of the identity key), decide whether
the identity key is a non-exportable key in *some* TPM that also holds that AK, and
that the CSR is for that key. Whether the AK sits next to *that EK* is then proven by
credential activation (``make_credential`` here, ``ActivateCredential`` on the device).

Checks, in order (first failure raises; every one is a negative case in the tests):

1. each TPM2B_PUBLIC parses (FormatError) and has the right shape: the EK is an RSA or
   ECC restricted decryption (storage) key with fixedTPM|fixedParent and AES;
   the AK a restricted signing key with fixedTPM|fixedParent|sensitiveDataOrigin; the
   identity key a non-restricted signing key with fixedTPM|fixedParent|
   sensitiveDataOrigin (made inside the TPM, never exportable) -> PolicyError;
2. the CSR parses (FormatError) and its self-signature verifies (SignatureError);
3. the CSR's public key is the identity key (VerificationError);
4. the certify attestation verifies with the AK, carries
   ``certify_qualifying_data(CSR DER)`` and certifies the identity key's Name
   (SignatureError / DigestMismatchError, from :func:`bastion.tpm.quote.verify_certify`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bastion.errors import FormatError, PolicyError, SignatureError, VerificationError
from bastion.formats.enrollment import certify_qualifying_data
from bastion.formats.tpm2 import Alg, EccParms, ObjectAttr, Public, RsaParms
from bastion.limits import ENROLL_MAX_CSR_SIZE
from bastion.tpm.quote import public_key, verify_certify

_A = ObjectAttr
EK_REQUIRED = _A.FIXED_TPM | _A.FIXED_PARENT | _A.RESTRICTED | _A.DECRYPT
AK_REQUIRED = (
    _A.FIXED_TPM | _A.FIXED_PARENT | _A.SENSITIVE_DATA_ORIGIN | _A.RESTRICTED | _A.SIGN_ENCRYPT
)
KEY_REQUIRED = _A.FIXED_TPM | _A.FIXED_PARENT | _A.SENSITIVE_DATA_ORIGIN | _A.SIGN_ENCRYPT


@dataclass(frozen=True, slots=True)
class EnrollmentEvidence:
    """What a device presents at /v1/enroll/begin, decoded from the wire."""

    serial: str
    ek_public: bytes
    ak_public: bytes
    key_public: bytes
    csr_der: bytes
    certify_attest: bytes
    certify_signature: bytes
    #: DER EK certificate read from the TPM's NV, if it has one
    ek_certificate: bytes | None = None


@dataclass(frozen=True, slots=True)
class VerifiedEvidence:
    """The facts the server may rely on after :func:`verify_evidence` returned."""

    ek_sha256: str
    ak_name: bytes
    csr: x509.CertificateSigningRequest


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _require(what: str, pub: Public, required: int, forbidden: int) -> None:
    missing = required & ~pub.attributes
    extra = forbidden & pub.attributes
    if missing or extra:
        raise PolicyError(
            f"{what} attributes 0x{pub.attributes:08x}: expected set 0x{int(required):08x}"
            f" and clear 0x{int(forbidden):08x} (missing 0x{int(missing):08x},"
            f" unexpected 0x{int(extra):08x})"
        )


def load_csr(csr_der: bytes) -> x509.CertificateSigningRequest:
    """Parse a DER CSR (bounded) and check its self-signature."""
    if len(csr_der) > ENROLL_MAX_CSR_SIZE:
        raise FormatError(f"CSR is {len(csr_der)} bytes, limit is {ENROLL_MAX_CSR_SIZE}")
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError as exc:
        raise FormatError(f"CSR is not a DER PKCS#10 request: {exc}") from exc
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported algorithms raise various types
        raise SignatureError(f"CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise SignatureError("CSR self-signature does not verify with its public key")
    return csr


def verify_evidence(ev: EnrollmentEvidence) -> VerifiedEvidence:
    """Run every check above; return the verified facts or raise the first failure."""
    ek = Public.parse(ev.ek_public)
    ak = Public.parse(ev.ak_public)
    key = Public.parse(ev.key_public)
    if not isinstance(ek.parameters, RsaParms | EccParms):
        raise PolicyError(f"EK type is 0x{ek.type:04x}, expected an RSA or ECC key")
    if ek.parameters.symmetric.algorithm != Alg.AES:
        raise PolicyError(
            "EK is not a storage key (no symmetric algorithm): cannot wrap a credential"
        )
    _require("EK", ek, EK_REQUIRED, _A.SIGN_ENCRYPT)
    _require("AK", ak, AK_REQUIRED, _A.DECRYPT)
    _require("identity key", key, KEY_REQUIRED, _A.RESTRICTED | _A.DECRYPT)
    csr = load_csr(ev.csr_der)
    if _spki(csr.public_key()) != _spki(public_key(key)):
        raise VerificationError("the CSR's public key is not the certified identity key")
    verify_certify(
        ev.certify_attest,
        ev.certify_signature,
        ev.ak_public,
        certify_qualifying_data(ev.csr_der),
        ev.key_public,
    )
    return VerifiedEvidence(
        ek_sha256=hashlib.sha256(ev.ek_public).hexdigest(), ak_name=ak.name, csr=csr
    )
