"""The device side of TPM-bound enrolment: ``bastion device provision``.

:func:`provision` runs the protocol of docs/adr/0008-provisioning.md over an injected
:class:`~bastion.io.http.HttpClient` (the one client and wire-error codec) with any
:class:`~bastion.tpm.base.Tpm`:

1. create an AK and an identity signing key in the TPM; build a CSR signed by the TPM
   (:mod:`bastion.device.tpm_csr`); have the AK certify the identity key with the
   qualifying data bound to that CSR;
2. ``POST /v1/enroll/begin`` with the provisioning key and the TPM's EK certificate
   from NV when it has one; receive a credential made for this TPM's EK and AK;
3. ``TPM2_ActivateCredential`` -> secret -> HKDF keys -> ``POST /v1/enroll/finish``
   with the HMAC proof; receive the certificate and the sealed device API key;
4. check the sealed key opens, and return a :class:`DeviceIdentity`.

:class:`DeviceIdentity` is saved as ``identity.json`` (mode 0600) in the device state
folder: the certificate, the TPM key blobs (useless without this TPM) and the
credential blobs plus the sealed API key. The API key is never stored in clear:
:meth:`DeviceIdentity.api_key` re-activates the credential in the TPM to open it.
:func:`provision_from_files` does the whole thing for the CLI and then deletes the
provisioning key file.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from bastion import limits
from bastion.device.tpm_csr import build_csr
from bastion.errors import ConfigError, FormatError, VerificationError
from bastion.formats import enrollment as en
from bastion.formats import strict_json
from bastion.formats.tpm2 import Alg, Signature
from bastion.io.files import atomic_write, read_bounded
from bastion.io.http import HttpClient
from bastion.tpm.base import Tpm, TpmKey
from bastion.tpm.quote import public_key

IDENTITY_FILE = "identity.json"
IDENTITY_VERSION = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > limits.JSON_MAX_SIZE:
        raise FormatError(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what}: not base64: {exc}") from exc


def _x509_signature(tpmt_signature: bytes) -> bytes:
    """A TPMT_SIGNATURE (ECDSA or RSASSA) in the encoding X.509 uses."""
    sig = Signature.parse(tpmt_signature)
    if sig.sig_alg == Alg.ECDSA:
        return encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
    if sig.sig_alg == Alg.RSASSA:
        return sig.sig
    raise FormatError(f"TPM signature scheme 0x{sig.sig_alg:04x} cannot sign a CSR")


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Everything a device keeps after enrolment (no secret in clear)."""

    device_id: str
    fleet_id: str
    server_url: str
    certificate_pem: str
    ca_certificate_pem: str
    key_public: bytes
    key_private: bytes
    ak_public: bytes
    ak_private: bytes
    challenge_id: str
    credential_blob: bytes
    encrypted_secret: bytes
    sealed_api_key: bytes

    @property
    def key(self) -> TpmKey:
        """The identity signing key (TPM blobs)."""
        from bastion.formats.tpm2 import object_name

        return TpmKey(self.key_public, self.key_private, object_name(self.key_public))

    @property
    def ak(self) -> TpmKey:
        """The attestation key (TPM blobs)."""
        from bastion.formats.tpm2 import object_name

        return TpmKey(self.ak_public, self.ak_private, object_name(self.ak_public))

    def api_key(self, tpm: Tpm) -> str:
        """Open the sealed API key by activating the stored credential in ``tpm``."""
        secret = tpm.activate_credential(self.ak, self.credential_blob, self.encrypted_secret)
        keys = en.derive_keys(secret, self.challenge_id)
        return en.open_api_key(keys, self.device_id, self.sealed_api_key)

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"version": IDENTITY_VERSION}
        for name, value in asdict(self).items():
            data[name] = _b64(value) if isinstance(value, bytes) else value
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DeviceIdentity:
        data = strict_json.loads(raw, what=IDENTITY_FILE)
        if not isinstance(data, dict) or data.get("version") != IDENTITY_VERSION:
            raise FormatError(f"{IDENTITY_FILE}: expected version {IDENTITY_VERSION}")
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name not in data:
                raise FormatError(f"{IDENTITY_FILE}: field {name!r} is missing")
            kind = cls.__dataclass_fields__[name].type
            if kind == "bytes":
                values[name] = _unb64(data[name], f"{IDENTITY_FILE}: {name}")
            elif isinstance(data[name], str):
                values[name] = data[name]
            else:
                raise FormatError(f"{IDENTITY_FILE}: field {name!r} must be a string")
        return cls(**values)

    def save(self, state_dir: Path) -> Path:
        """Write ``identity.json`` (0600) and ``device.pem`` into ``state_dir``."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / IDENTITY_FILE
        atomic_write(path, self.to_json(), mode=0o600)
        atomic_write(state_dir / "device.pem", self.certificate_pem.encode(), mode=0o644)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> DeviceIdentity:
        """Read ``identity.json`` from ``state_dir``."""
        return cls.from_json(
            read_bounded(state_dir / IDENTITY_FILE, limits.JSON_MAX_SIZE, "device identity")
        )


def _post(http: HttpClient, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    """POST with a bearer token; the answer's JSON object (errors: the one wire codec)."""
    return http.call_object("POST", path, body, token=token)


def _text(data: dict[str, Any], name: str, what: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > limits.JSON_MAX_SIZE:
        raise FormatError(f"{what}: field {name!r} missing or not a string")
    return value


def build_enrollment(tpm: Tpm, serial: str) -> tuple[TpmKey, TpmKey, dict[str, Any]]:
    """Steps 1: AK, identity key, TPM-signed CSR and certify; the begin body (no secrets)."""
    ak = tpm.create_ak()
    key = tpm.create_signing_key("ecc-p256")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)])
    csr_der = build_csr(
        subject,
        public_key(key.public),
        lambda digest: _x509_signature(tpm.sign(key, digest)),
    )
    certified = tpm.certify(ak, key, en.certify_qualifying_data(csr_der))
    csr_pem = x509.load_der_x509_csr(csr_der).public_bytes(serialization.Encoding.PEM)
    body = {
        "serial": serial,
        "ek_public": _b64(tpm.ek_public()),
        "ak_public": _b64(ak.public),
        "key_public": _b64(key.public),
        "csr": csr_pem.decode(),
        "certify_attest": _b64(certified.attest),
        "certify_signature": _b64(certified.signature),
    }
    ek_cert = tpm.ek_certificate()
    if ek_cert:  # the maker's proof that the EK is in hardware (certified fleets need it)
        body["ek_certificate"] = _b64(ek_cert)
    return ak, key, body


def provision(
    tpm: Tpm,
    http: HttpClient,
    *,
    provisioning_key: str,
    serial: str,
    server_url: str = "",
    fleet_id: str | None = None,
) -> DeviceIdentity:
    """Enrol this device; ``http`` has the server as its base URL."""
    if not serial or len(serial) > limits.ENROLL_MAX_SERIAL_LENGTH:
        raise ConfigError(f"device serial must be 1..{limits.ENROLL_MAX_SERIAL_LENGTH} characters")
    ak, key, body = build_enrollment(tpm, serial)
    if fleet_id:
        body["fleet_id"] = fleet_id
    begin = _post(http, "/v1/enroll/begin", body, provisioning_key)
    challenge_id = _text(begin, "challenge_id", "enroll/begin")
    blob = _unb64(begin.get("credential_blob"), "enroll/begin: credential_blob")
    encrypted = _unb64(begin.get("encrypted_secret"), "enroll/begin: encrypted_secret")
    secret = tpm.activate_credential(ak, blob, encrypted)
    keys = en.derive_keys(secret, challenge_id)
    finish = _post(
        http,
        "/v1/enroll/finish",
        {"challenge_id": challenge_id, "proof": _b64(en.finish_proof(keys, challenge_id))},
        provisioning_key,
    )
    identity = DeviceIdentity(
        device_id=_text(finish, "device_id", "enroll/finish"),
        fleet_id=_text(finish, "fleet_id", "enroll/finish"),
        server_url=server_url or http.server,
        certificate_pem=_text(finish, "certificate", "enroll/finish"),
        ca_certificate_pem=_text(finish, "ca_certificate", "enroll/finish"),
        key_public=key.public,
        key_private=key.private,
        ak_public=ak.public,
        ak_private=ak.private,
        challenge_id=challenge_id,
        credential_blob=blob,
        encrypted_secret=encrypted,
        sealed_api_key=_unb64(finish.get("sealed_api_key"), "enroll/finish: sealed_api_key"),
    )
    en.open_api_key(keys, identity.device_id, identity.sealed_api_key)  # fail now, not later
    cert = x509.load_pem_x509_certificate(identity.certificate_pem.encode())
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != public_key(key.public).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise VerificationError("the issued certificate is not for this device's TPM key")
    return identity


def read_provisioning_key(path: Path) -> str:
    """The provisioning key in ``path`` (one line, ``bst_pk_...``)."""
    token = read_bounded(path, 4096, "provisioning key file").decode(errors="replace").strip()
    if not token.startswith("bst_pk_"):
        raise FormatError(f"provisioning key file {str(path)!r} does not hold a bst_pk_ key")
    return token


def provision_from_files(
    tpm: Tpm,
    *,
    server_url: str,
    key_file: Path,
    serial: str,
    state_dir: Path,
    http: HttpClient | None = None,
    ca_file: str | None = None,
    fleet_id: str | None = None,
) -> DeviceIdentity:
    """CLI flow: read the key file, enrol, save the identity, delete the key file."""
    token = read_provisioning_key(key_file)
    client = http or HttpClient(server_url, ca_file=ca_file, max_response=limits.HTTP_MAX_BODY)
    try:
        identity = provision(
            tpm,
            client,
            provisioning_key=token,
            serial=serial,
            server_url=server_url,
            fleet_id=fleet_id,
        )
    finally:
        if http is None:
            client.close()
    identity.save(state_dir)
    os.unlink(key_file)
    return identity
