"""Rotate the device's identity key, in an order that survives a crash at any point.

:func:`rotate_identity`:

1. create a new ECC P-256 signing key in the TPM, a CSR signed by it, and the enrolled
   AK's TPM2_Certify of it with the CSR-bound qualifying data (as at enrolment);
2. write ``identity.next.json`` (the current identity with the new key blobs) before
   anything is sent, so the key the server may switch to is never lost;
3. ``POST /v1/device/identity/rotate``, signed with the *current* key (a refusal
   deletes ``identity.next.json``; a lost answer keeps it);
4. check the returned certificate is for the new key, write ``identity.json`` with the
   new key and certificate (atomic), then delete ``identity.next.json``.

:func:`recover_rotation` runs at agent start: when ``identity.next.json`` is present,
a crash came between 2 and 4. If the server accepts a request signed with the new key
(``GET /v1/device/certificate``) it had switched: the new identity is completed with the
certificate and saved. Otherwise the server never switched and the pending key is
dropped.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from bastion import limits
from bastion.device.provision import DeviceIdentity, _x509_signature
from bastion.device.tpm_csr import build_csr
from bastion.errors import AuthError, BastionError, FormatError, TransportError, VerificationError
from bastion.formats import enrollment as en
from bastion.io.files import atomic_write, read_bounded
from bastion.io.http import HttpClient
from bastion.tpm.base import Tpm
from bastion.tpm.quote import public_key

NEXT_FILE = "identity.next.json"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _with_certificate(identity: DeviceIdentity, pem: str) -> DeviceIdentity:
    cert = x509.load_pem_x509_certificate(pem.encode())
    if _spki(cert.public_key()) != _spki(public_key(identity.key_public)):
        raise VerificationError("the server's new certificate is not for the new TPM key")
    return replace(identity, certificate_pem=pem)


def rotate_identity(
    tpm: Tpm, identity: DeviceIdentity, http: HttpClient, state_dir: Path
) -> DeviceIdentity:
    """Steps 1-4 of the module docstring; the new identity (saved)."""
    key = tpm.create_signing_key("ecc-p256")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.device_id)])
    csr_der = build_csr(
        subject, public_key(key.public), lambda digest: _x509_signature(tpm.sign(key, digest))
    )
    certified = tpm.certify(identity.ak, key, en.certify_qualifying_data(csr_der))
    pending = replace(identity, key_public=key.public, key_private=key.private)
    atomic_write(state_dir / NEXT_FILE, pending.to_json(), mode=0o600)
    csr_pem = x509.load_der_x509_csr(csr_der).public_bytes(serialization.Encoding.PEM).decode()
    body = {
        "key_public": _b64(key.public),
        "csr": csr_pem,
        "certify_attest": _b64(certified.attest),
        "certify_signature": _b64(certified.signature),
    }
    try:
        answer = http.call_object("POST", "/v1/device/identity/rotate", body)
    except TransportError:
        raise  # the outcome is unknown: recover_rotation decides at the next start
    except BastionError:
        (state_dir / NEXT_FILE).unlink(missing_ok=True)  # the server refused: nothing changed
        raise
    pem = answer.get("certificate")
    if not isinstance(pem, str):
        raise FormatError("identity/rotate: the answer has no certificate")
    new = _with_certificate(pending, pem)
    new.save(state_dir)
    (state_dir / NEXT_FILE).unlink(missing_ok=True)
    return new


def recover_rotation(
    tpm: Tpm, identity: DeviceIdentity, state_dir: Path, probe: HttpClient
) -> DeviceIdentity:
    """Finish or drop a rotation interrupted by a crash (module docstring).

    ``probe`` must sign with the pending identity (the caller builds it with
    :func:`pending_identity`)."""
    del tpm
    path = state_dir / NEXT_FILE
    if not path.exists():
        return identity
    pending = pending_identity(state_dir)
    assert pending is not None
    try:
        answer = probe.call_object("GET", "/v1/device/certificate")
    except AuthError:
        path.unlink()
        return identity
    pem = answer.get("certificate")
    if not isinstance(pem, str):
        raise FormatError("device/certificate: the answer has no certificate")
    new = _with_certificate(pending, pem)
    new.save(state_dir)
    path.unlink()
    return new


def pending_identity(state_dir: Path) -> DeviceIdentity | None:
    """The identity of an interrupted rotation, if any."""
    path = state_dir / NEXT_FILE
    if not path.exists():
        return None
    return DeviceIdentity.from_json(read_bounded(path, limits.JSON_MAX_SIZE, "pending identity"))
