"""The server's device certificate authority, on top of :mod:`bastion.trust.pki`.

The CA is a certificate + private key in ``<data_dir>/pki/device-ca.pem`` and
``device-ca.key`` (PEM PKCS#8, 0600; a passphrase-protected key reads its passphrase
from ``BASTION_DEVICE_CA_PASSPHRASE``). Operators put their fleet CA there (the
``fleet-ca`` of ``bastion keys init``); when both files are absent the server creates a
self-signed development CA on first use and logs a warning.

Issuing and CRLs are :func:`bastion.trust.pki.issue_device_certificate` (CN = device
id, SAN URI ``urn:bastion:device:<id>``, EKU clientAuth) and
:func:`bastion.trust.pki.build_crl` (CRL number = milliseconds since the epoch, so it
only grows; nextUpdate one day), so ``openssl verify -crl_check`` reads them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bastion import limits
from bastion.errors import ConfigError
from bastion.io.files import atomic_write, read_bounded
from bastion.trust import pki
from bastion.trust.keys import (
    KeyAlgorithm,
    generate_private_key,
    load_private_key_pem,
    write_private_key,
)
from bastion.trust.signer import SoftwareSigner

log = logging.getLogger("bastion.server")

DEVICE_CERT_VALIDITY = dt.timedelta(days=365)
CRL_VALIDITY = dt.timedelta(days=1)
CA_CERT_FILE = "device-ca.pem"
CA_KEY_FILE = "device-ca.key"


def device_uri(device_id: str) -> str:
    """The SAN URI naming a device."""
    return pki.DEVICE_URN_PREFIX + device_id


@dataclass(frozen=True, slots=True)
class DeviceCa:
    """The CA that signs device certificates and the device CRL."""

    authority: pki.CertificateAuthority

    @property
    def certificate(self) -> x509.Certificate:
        return self.authority.certificate

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def generate(cls, *, now: dt.datetime, name: str = "bastion development device CA") -> DeviceCa:
        """A fresh self-signed ECDSA P-256 CA (development default and tests)."""
        signer = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
        cert = pki.create_root_ca(signer, name, now=now, validity=dt.timedelta(days=3650))
        return cls(pki.CertificateAuthority(signer, cert))

    @classmethod
    def load_or_create(cls, folder: Path, *, now: dt.datetime) -> DeviceCa:
        """Load the CA from ``folder``, creating a development CA when both files are absent."""
        cert_path, key_path = folder / CA_CERT_FILE, folder / CA_KEY_FILE
        if not cert_path.exists() and not key_path.exists():
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            private = generate_private_key(KeyAlgorithm.ECDSA_P256)
            cert = pki.create_root_ca(
                SoftwareSigner(private),
                "bastion development device CA",
                now=now,
                validity=dt.timedelta(days=3650),
            )
            write_private_key(key_path, private)
            atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
            log.warning("created a development device CA in %s", folder)
        cert = x509.load_pem_x509_certificate(
            read_bounded(cert_path, limits.CERT_MAX_SIZE, "device CA certificate")
        )
        passphrase = os.environ.get("BASTION_DEVICE_CA_PASSPHRASE")
        key = load_private_key_pem(
            read_bounded(key_path, limits.KEY_FILE_MAX_SIZE, "device CA key"),
            passphrase.encode() if passphrase else None,
            what=f"device CA key {key_path}",
        )
        return cls(pki.CertificateAuthority(SoftwareSigner(key), cert))

    def issue(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        device_id: str,
        now: dt.datetime,
        validity: dt.timedelta = DEVICE_CERT_VALIDITY,
    ) -> x509.Certificate:
        """A device certificate for the (already verified) CSR's key."""
        return pki.issue_device_certificate(
            self.authority,
            csr.public_bytes(serialization.Encoding.PEM),
            device_id,
            validity,
            now=now,
        )

    def crl(self, revoked: list[tuple[int, dt.datetime]], *, now: dt.datetime) -> bytes:
        """DER CRL listing ``(serial, revoked_at)`` pairs."""
        entries = [pki.RevokedEntry(serial, when) for serial, when in revoked]
        crl = pki.build_crl(
            self.authority,
            entries,
            crl_number=int(now.timestamp() * 1000),
            next_update=CRL_VALIDITY,
            now=now,
        )
        return crl.public_bytes(serialization.Encoding.DER)


def app_device_ca(app: Any) -> DeviceCa:
    """The device CA of an app made by ``create_app`` (built there, kept in its context)."""
    from bastion.server.context import app_context

    ca = app_context(app).device_ca
    if ca is None:
        raise ConfigError("this app has no device CA")
    return ca
