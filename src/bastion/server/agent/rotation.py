"""Identity-key rotation: a new TPM key, certified by the AK bound at enrolment.

``POST /v1/device/identity/rotate`` (signed with the current key) carries a new identity
key's TPM2B_PUBLIC, a CSR signed by it, and the AK's TPM2_Certify of it with qualifying
data bound to the CSR (the same evidence as enrolment, docs/adr/0008-provisioning.md).
The server accepts it only when, in order:

1. the device was enrolled with an AK (``devices.ak_public``; else there is nothing to
   bind the new key to this TPM) -> ConflictError;
2. the new key is a non-restricted signing key made inside a TPM and never exportable
   (fixedTPM, fixedParent, sensitiveDataOrigin) -> PolicyError;
3. the CSR parses, its self-signature verifies and its key is the new key;
4. the certify verifies with the *enrolled* AK, certifies the new key's Name and carries
   the CSR-bound qualifying data -> SignatureError / DigestMismatchError.

Then the device CA issues a certificate for the new key, the device row switches to it
(key, certificate, serial, fingerprint) and the old certificate goes onto the CRL
(reason ``superseded``), with an audit entry; from the next request only the new key's
signatures are accepted.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from bastion.errors import ConflictError, PolicyError, VerificationError
from bastion.formats.enrollment import certify_qualifying_data
from bastion.formats.tpm2 import ObjectAttr, Public
from bastion.server.audit.service import record
from bastion.server.auth.principal import Principal
from bastion.server.devices import service as devices
from bastion.server.devices.ca import DeviceCa
from bastion.server.devices.models import Device, RevokedCertificate
from bastion.server.enrollment.evidence import KEY_REQUIRED, load_csr
from bastion.tpm.quote import public_key, verify_certify


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def rotate(  # noqa: PLR0917 - the evidence's parts
    session: Session,
    principal: Principal,
    ca: DeviceCa,
    key_public: bytes,
    csr_der: bytes,
    certify_attest: bytes,
    certify_signature: bytes,
    now: dt.datetime,
) -> Device:
    """Switch the calling device to a new TPM-certified key (module docstring)."""
    device = devices.own(session, principal)
    if device.ak_public is None:
        raise ConflictError(
            f"device {device.id} was enrolled without an AK: re-enrol it to rotate its key"
        )
    key = Public.parse(key_public)
    missing = KEY_REQUIRED & ~key.attributes
    forbidden = (ObjectAttr.RESTRICTED | ObjectAttr.DECRYPT) & key.attributes
    if missing or forbidden:
        raise PolicyError(
            f"new identity key attributes 0x{key.attributes:08x}: missing "
            f"0x{int(missing):08x}, unexpected 0x{int(forbidden):08x}"
        )
    csr = load_csr(csr_der)
    if _spki(csr.public_key()) != _spki(public_key(key_public)):
        raise VerificationError("the CSR's public key is not the new identity key")
    verify_certify(
        certify_attest,
        certify_signature,
        device.ak_public,
        certify_qualifying_data(csr_der),
        key_public,
    )
    cert = ca.issue(csr, device_id=device.id, now=now)
    der = cert.public_bytes(serialization.Encoding.DER)
    old_serial = device.cert_serial
    session.add(
        RevokedCertificate(
            serial=old_serial,
            device_id=device.id,
            fleet_id=device.fleet_id,
            revoked_at=now,
            reason="superseded",
        )
    )
    device.key_public = key_public
    device.cert_serial = f"{cert.serial_number:x}"
    device.cert_sha256 = hashlib.sha256(der).hexdigest()
    device.certificate = cert.public_bytes(serialization.Encoding.PEM).decode()
    details = {"device_id": device.id, "old_serial": old_serial, "new_serial": device.cert_serial}
    record(session, "device.key.rotate", principal.actor, details, org_id=principal.org_id, at=now)
    session.commit()
    return device


def certificate_pem(device: Device) -> str:
    """The device's current certificate (PEM)."""
    x509.load_pem_x509_certificate(device.certificate.encode())  # stored by us: must parse
    return device.certificate
