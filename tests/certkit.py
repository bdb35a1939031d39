"""Self-signed test certificates: one builder for the tests that need a throwaway signer."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from bastion.trust.signer import PrivateKey


def self_signed(key: PrivateKey, cn: str, *, key_id: bool = False) -> x509.Certificate:
    """A certificate for ``key`` named ``cn``, valid from yesterday for 30 days;
    ``key_id`` adds the SubjectKeyIdentifier (module signatures name their signer by it)."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if key_id:
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = builder.add_extension(ski, critical=False)
    return builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
