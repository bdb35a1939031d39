"""The server's device certificate authority: issue device certificates, build the CRL.

The CA is a certificate + ECDSA P-256 key in ``<data_dir>/pki/device-ca.pem`` and
``device-ca.key`` (0600). Operators put their fleet intermediate CA there (made by
``bastion keys init``); when the files are absent the server creates a self-signed
development CA on first use and says so in the log.

Device certificates (from a verified CSR): subject CN = device id, O = fleet id, SAN
URI ``urn:bastion:device:<id>``, EKU clientAuth, keyUsage digitalSignature, basic
constraints CA:FALSE, SKI/AKI, random 159-bit serial, validity from ``now`` (minus
5 minutes of clock skew) for ``validity``. The CRL (X.509 v2, CRL number = number of
entries + issue counter, nextUpdate = now + 1 day) lists every revoked device
certificate; ``openssl verify -crl_check`` accepts the chain and refuses a revoked one.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion import limits
from bastion.errors import ConfigError
from bastion.io.files import atomic_write, read_bounded

log = logging.getLogger("bastion.server")

DEVICE_CERT_VALIDITY = dt.timedelta(days=365)
CRL_VALIDITY = dt.timedelta(days=1)
_SKEW = dt.timedelta(minutes=5)


def device_uri(device_id: str) -> str:
    """The SAN URI naming a device."""
    return f"urn:bastion:device:{device_id}"


@dataclass
class DeviceCa:
    """A CA certificate and its key; thread-safe issuing."""

    certificate: x509.Certificate
    _key: ec.EllipticCurvePrivateKey
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def load_or_create(cls, folder: Path, *, now: dt.datetime) -> DeviceCa:
        """Load ``device-ca.pem``/``.key`` from ``folder``, creating a dev CA if absent."""
        cert_path, key_path = folder / "device-ca.pem", folder / "device-ca.key"
        if not cert_path.exists() and not key_path.exists():
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            ca = cls.generate(now=now)
            atomic_write(
                key_path,
                ca._key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                mode=0o600,
            )
            atomic_write(cert_path, ca.certificate_pem.encode())
            log.warning("created a development device CA in %s", folder)
        cert = x509.load_pem_x509_certificate(
            read_bounded(cert_path, limits.CERT_MAX_SIZE, "device CA certificate")
        )
        key = serialization.load_pem_private_key(
            read_bounded(key_path, limits.KEY_FILE_MAX_SIZE, "device CA key"),
            password=os.environ.get("BASTION_DEVICE_CA_PASSPHRASE", "").encode() or None,
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"device CA key in {key_path} must be an ECDSA key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise ConfigError(f"device CA key {key_path} does not match {cert_path}")
        return cls(cert, key)

    @classmethod
    def generate(cls, *, now: dt.datetime, name: str = "bastion development device CA") -> DeviceCa:
        """A fresh self-signed CA (development default and tests)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        device_id: str,
        fleet_id: str,
        now: dt.datetime,
        validity: dt.timedelta = DEVICE_CERT_VALIDITY,
    ) -> x509.Certificate:
        """A device certificate for the (already verified) CSR's key."""
        public = csr.public_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, device_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, fleet_id),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(device_uri(device_id))]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        with self._lock:
            return builder.sign(self._key, hashes.SHA256())

    def crl(
        self, revoked: list[tuple[int, dt.datetime]], *, now: dt.datetime, number: int
    ) -> bytes:
        """DER CRL listing ``(serial, revoked_at)`` pairs."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - _SKEW)
            .next_update(now + CRL_VALIDITY)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        with self._lock:
            crl = builder.sign(self._key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.DER)


def app_device_ca(app: Any) -> DeviceCa:
    """The device CA of an app made by ``create_app``: ``<data_dir>/pki``, loaded once."""
    ca = getattr(app.state, "device_ca", None)
    if not isinstance(ca, DeviceCa):
        ctx = app.state.ctx
        ca = DeviceCa.load_or_create(ctx.settings.data_dir / "pki", now=ctx.clock.now())
        app.state.device_ca = ca
    return ca
