"""X.509 helpers shared by the CMS / PKCS#7 verifiers (Authenticode, bundles, Secure Boot).

This module owns what :mod:`bastion.trust.authenticode`, :mod:`bastion.trust.bundle` and
:mod:`bastion.trust.secureboot` do alike with the certificates a SignedData carries:

* :func:`certificate_der`: a certificate's DER encoding;
* :func:`load_certificate`: load a carried certificate and parse, at once, the fields
  verification reads (cryptography parses lazily), as a :class:`FormatError`;
* :data:`SCHEMES`, :data:`SIGNATURE_ALGORITHM_NAMES`, :data:`SIGNATURE_ALGORITHM_HASH`:
  the RSA PKCS#1 v1.5 / ECDSA schemes a SignerInfo may use, and their names in it;
* :func:`verifier_for`: the :class:`~bastion.trust.signer.Verifier` of a signer
  certificate's key for a digest;
* :func:`issued_by`, :func:`check_time` and :func:`chain_to_anchor`: the path from a
  signer through carried intermediates to a trusted certificate. Validity dates are
  checked only when the caller gives a time: bundles do (RAUC does), Authenticode does
  not (firmware has no trusted clock).

Every function that raises takes a ``what`` label (``"Authenticode"``, ``"bundle"``)
that starts its error messages. Parsing the CMS structures themselves stays with each
format's module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bastion.errors import ConfigError, FormatError, SignatureError
from bastion.limits import CERT_CHAIN_MAX_DEPTH
from bastion.trust.signer import SignatureScheme, Verifier

#: the scheme of a signer key (``"rsa"`` or its curve name) with a digest
SCHEMES: Mapping[tuple[str, str], SignatureScheme] = {
    ("rsa", "sha256"): SignatureScheme.RSA_PKCS1V15_SHA256,
    ("rsa", "sha384"): SignatureScheme.RSA_PKCS1V15_SHA384,
    ("rsa", "sha512"): SignatureScheme.RSA_PKCS1V15_SHA512,
    ("secp256r1", "sha256"): SignatureScheme.ECDSA_P256_SHA256,
    ("secp384r1", "sha384"): SignatureScheme.ECDSA_P384_SHA384,
}
#: the SignerInfo signatureAlgorithm (asn1crypto name) bastion writes for a scheme
SIGNATURE_ALGORITHM_NAMES: Mapping[SignatureScheme, str] = {
    SignatureScheme.RSA_PKCS1V15_SHA256: "rsassa_pkcs1v15",
    SignatureScheme.RSA_PKCS1V15_SHA384: "rsassa_pkcs1v15",
    SignatureScheme.RSA_PKCS1V15_SHA512: "rsassa_pkcs1v15",
    SignatureScheme.ECDSA_P256_SHA256: "sha256_ecdsa",
    SignatureScheme.ECDSA_P384_SHA384: "sha384_ecdsa",
}
#: signatureAlgorithm values accepted in a SignerInfo, with the hash they imply (None: any)
SIGNATURE_ALGORITHM_HASH: Mapping[str, str | None] = {
    "rsassa_pkcs1v15": None,
    "sha256_rsa": "sha256",
    "sha384_rsa": "sha384",
    "sha512_rsa": "sha512",
    "sha256_ecdsa": "sha256",
    "sha384_ecdsa": "sha384",
    "ecdsa": None,
}


def certificate_der(cert: x509.Certificate) -> bytes:
    """The DER encoding of ``cert``."""
    return cert.public_bytes(serialization.Encoding.DER)


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """Load a carried DER certificate and parse, now, the fields verification reads
    (subject, issuer, serial: cryptography parses lazily, so a bad name would otherwise
    fail much later); FormatError "``what`` signature carries a bad certificate"."""
    try:
        cert = x509.load_der_x509_certificate(data)
        cert.subject.rfc4514_string()
        cert.issuer.public_bytes()
        _ = cert.serial_number
        return cert
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        raise FormatError(f"{what} signature carries a bad certificate: {exc}") from exc


def verifier_for(
    cert: x509.Certificate,
    hash_name: str,
    what: str,
    schemes: Mapping[tuple[str, str], SignatureScheme] = SCHEMES,
    *,
    scheme_what: str | None = None,
) -> Verifier:
    """The verifier of ``cert``'s key with ``hash_name``, by ``schemes``.

    FormatError for an unreadable key; SignatureError for a key that is not RSA or
    ECDSA, or a key / hash pair not in ``schemes`` (that message starts with
    ``scheme_what``, by default ``what``).
    """
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise FormatError(f"{what} signer certificate has a bad public key: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        kind = "rsa"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind = key.curve.name
    else:
        raise SignatureError(f"{what} signer key {type(key).__name__} is not RSA or ECDSA")
    scheme = schemes.get((kind, hash_name))
    if scheme is None:
        label = what if scheme_what is None else scheme_what
        raise SignatureError(f"{label}: a {kind} key with {hash_name} is not supported")
    try:
        return Verifier.of(key, scheme)
    except ConfigError as exc:
        raise SignatureError(f"{what} signer key refused: {exc}") from exc


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s name and key signed ``cert`` (False on any failure)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def check_time(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    """SignatureError unless ``now`` is within ``cert``'s validity period."""
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SignatureError(
            f"{what} certificate {cert.subject.rfc4514_string()!r} is not valid at "
            f"{now.isoformat()} (valid {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()})"
        )


def chain_to_anchor(
    signer: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trusted: Sequence[x509.Certificate],
    what: str,
    *,
    trusted_name: str,
    now: dt.datetime | None,
) -> x509.Certificate:
    """The ``trusted`` certificate ``signer`` chains to through ``intermediates``.

    A certificate byte-identical to a trusted one is its own anchor; otherwise the first
    trusted certificate that issued it, or else the next intermediate that did, followed
    for at most :data:`~bastion.limits.CERT_CHAIN_MAX_DEPTH` steps. With ``now`` every
    certificate on the way (and the anchor reached through an issuer) must be valid at
    ``now``; ``now=None`` checks no dates. SignatureError when there is no such chain
    ("... any of the N ``trusted_name`` certificate(s)").
    """
    current = signer
    seen: set[bytes] = set()
    trusted_der = [(certificate_der(t), t) for t in trusted]
    for _ in range(CERT_CHAIN_MAX_DEPTH):
        if now is not None:
            check_time(current, now, what)
        current_der = certificate_der(current)
        for tder, anchor in trusted_der:
            if tder == current_der:
                return anchor
        for _, anchor in trusted_der:
            if issued_by(current, anchor):
                if now is not None:
                    check_time(anchor, now, what)
                return anchor
        seen.add(current_der)
        nxt = next(
            (c for c in intermediates if certificate_der(c) not in seen and issued_by(current, c)),
            None,
        )
        if nxt is None:
            break
        current = nxt
    raise SignatureError(
        f"{what} signer {signer.subject.rfc4514_string()!r} does not chain to any of the "
        f"{len(trusted)} {trusted_name} certificate(s)"
    )
