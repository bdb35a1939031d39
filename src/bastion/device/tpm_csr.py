"""PKCS#10 certificate requests signed by a key that never leaves the TPM.

``cryptography``'s CSR builder needs the private key object, which a TPM-resident key
does not have. So this module hand-encodes the small DER structure of RFC 2986::

    CertificationRequest ::= SEQUENCE {
        certificationRequestInfo  SEQUENCE { version INTEGER 0, subject Name,
                                             subjectPKInfo SubjectPublicKeyInfo,
                                             attributes [0] IMPLICIT SET OF Attribute },
        signatureAlgorithm        AlgorithmIdentifier,
        signature                 BIT STRING }

The subject Name and SubjectPublicKeyInfo DER come from ``cryptography``; only the
outer SEQUENCEs, the version and the empty attribute set are written here. The signer
is a callable that takes the SHA-256 digest of the CertificationRequestInfo and returns
the signature in X.509 form (DER ECDSA-Sig-Value, or the RSASSA-PKCS1-v1_5 octets).
The result is parsed back and its signature checked before it is returned, so a TPM
that signed the wrong bytes is caught here (``openssl req -verify`` accepts the output:
tests/interop).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bastion.errors import ConfigError, SignatureError

#: digest (32 bytes) -> signature in X.509 encoding
DigestSigner = Callable[[bytes], bytes]

# AlgorithmIdentifier DER: ecdsa-with-SHA256 (no parameters), sha256WithRSAEncryption (NULL)
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def certification_request_info(
    subject: x509.Name, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
) -> bytes:
    """The DER CertificationRequestInfo (the signed part of a CSR) with no attributes."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    version = _tlv(0x02, b"\x00")
    attributes = _tlv(0xA0, b"")
    return _tlv(0x30, version + subject.public_bytes() + spki + attributes)


def build_csr(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    sign_digest: DigestSigner,
) -> bytes:
    """A DER PKCS#10 CSR for ``public_key``, signed through ``sign_digest``; checked."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithm = _ECDSA_SHA256
    elif isinstance(public_key, rsa.RSAPublicKey):
        algorithm = _RSA_SHA256
    else:
        raise ConfigError(
            f"CSR key type {type(public_key).__name__} unsupported: expected ECDSA or RSA"
        )
    info = certification_request_info(subject, public_key)
    signature = sign_digest(hashlib.sha256(info).digest())
    der = _tlv(0x30, info + algorithm + _tlv(0x03, b"\x00" + signature))
    csr = x509.load_der_x509_csr(der)
    if not csr.is_signature_valid:
        raise SignatureError("the TPM's signature over the CSR does not verify with its key")
    return der
