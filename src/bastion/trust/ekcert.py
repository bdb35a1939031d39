"""EK certificates: is this endorsement key certified by a TPM manufacturer we trust?

A TPM maker writes an X.509 certificate for each chip's endorsement key into NV
(0x01c00002 for the RSA-2048 EK, TCG EK Credential Profile). A fleet keeps a trust
store of the makers' CA certificates; :func:`verify_ek_certificate` decides, pure and
raising, whether a presented EK certificate

1. parses (FormatError; bounded by ``CERT_MAX_SIZE``) and is valid now (ExpiredError);
2. is signed by one of the trusted CAs (SignatureError if a CA of that name does not
   verify it, VerificationError "untrusted" if no CA of its issuer's name is trusted);
   the CA itself must be valid now (ExpiredError) and a CA (basicConstraints cA);
3. certifies exactly the presented EK: the certificate's public key equals the key in
   the EK's TPM2B_PUBLIC (VerificationError otherwise: a real certificate copied next
   to another key proves nothing).

Every certificate in a fleet's store is a trust anchor (an operator may trust a maker's
intermediate CA alone, like OpenSSL's partial-chain mode); the path is one signature
long. Manufacturer EK certificates often break web-PKI rules (empty subject, critical
SAN holding a directory name, odd key usages), so this check is written for them
rather than borrowed from a TLS path builder. See docs/adr/0010-enrolment-hardening.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from bastion.errors import ExpiredError, FormatError, SignatureError, VerificationError
from bastion.limits import CERT_MAX_SIZE
from bastion.tpm.quote import public_key

#: TCG OID of the EK certificate extended key usage (tcg-kp-EKCertificate)
EK_CERTIFICATE_EKU = x509.ObjectIdentifier("2.23.133.8.1")


@dataclass(frozen=True, slots=True)
class CertifiedEk:
    """What :func:`verify_ek_certificate` proved: which CA certified the EK."""

    ca_sha256: str
    ca_subject: str
    certificate_sha256: str


def load_ek_certificate(data: bytes) -> x509.Certificate:
    """A DER (or PEM) EK certificate, bounded; FormatError otherwise."""
    if len(data) > CERT_MAX_SIZE:
        raise FormatError(f"EK certificate is {len(data)} bytes, limit is {CERT_MAX_SIZE}")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise FormatError(f"EK certificate is not an X.509 certificate: {exc}") from exc


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the DER certificate."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"(empty subject, serial {cert.serial_number:x})"


def _valid_now(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise ExpiredError(
            f"{what} {_name(cert)} is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if now > cert.not_valid_after_utc:
        raise ExpiredError(
            f"{what} {_name(cert)} expired at {cert.not_valid_after_utc.isoformat()}"
        )


def check_ca_certificate(cert: x509.Certificate) -> None:
    """VerificationError unless ``cert`` may sign certificates (basicConstraints cA)."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise VerificationError(f"{_name(cert)} is not a CA certificate (basicConstraints cA)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise VerificationError(f"{_name(cert)} may not sign certificates (keyUsage)")


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # InvalidSignature, or an algorithm cryptography cannot verify
        return False
    return True


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_ek_certificate(
    cert_der: bytes,
    ek_public: bytes,
    anchors: Sequence[x509.Certificate],
    *,
    now: dt.datetime,
) -> CertifiedEk:
    """Raise unless ``cert_der`` is a current EK certificate for the EK ``ek_public``
    (TPM2B_PUBLIC) issued by one of ``anchors``; return which anchor certified it."""
    cert = load_ek_certificate(cert_der)
    _valid_now(cert, now, "EK certificate")
    candidates = [a for a in anchors if a.subject == cert.issuer]
    if not candidates:
        raise VerificationError(
            f"EK certificate issuer {cert.issuer.rfc4514_string()!r} is untrusted: "
            f"not among the fleet's {len(anchors)} EK CA certificate(s)"
        )
    issuer = next((ca for ca in candidates if _issued_by(cert, ca)), None)
    if issuer is None:
        raise SignatureError(
            f"EK certificate claims issuer {cert.issuer.rfc4514_string()!r} but its signature "
            "does not verify with any trusted CA of that name"
        )
    _valid_now(issuer, now, "EK CA certificate")
    check_ca_certificate(issuer)
    try:
        cert_key = _spki(cert.public_key())
    except (ValueError, TypeError) as exc:
        raise FormatError(f"EK certificate public key cannot be read: {exc}") from exc
    if cert_key != _spki(public_key(ek_public)):
        raise VerificationError("EK certificate's public key is not the presented EK")
    return CertifiedEk(
        ca_sha256=fingerprint(issuer),
        ca_subject=issuer.subject.rfc4514_string(),
        certificate_sha256=fingerprint(cert),
    )
