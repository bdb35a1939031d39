"""The byte-level pieces of bastion's TPM-bound enrolment protocol, shared by both ends.

Pure (no I/O, no clock): the certify qualifying data that binds a TPM2_Certify to a
CSR, the keys derived from the credential secret that ``TPM2_ActivateCredential``
releases, the finish proof, and the sealed device API key blob. See
``docs/adr/0008-provisioning.md`` for the protocol.

* ``certify_qualifying_data(csr_der)`` = SHA-256(``CERTIFY_LABEL`` || CSR DER).
* ``derive_keys(secret, challenge_id)`` = HKDF-SHA256(secret, salt=challenge_id) with
  info ``PROOF_INFO`` and ``WRAP_INFO``: two independent 32-byte keys.
* ``finish_proof(keys, challenge_id)`` = HMAC-SHA256(K_proof, ``FINISH_LABEL`` || id).
* ``seal_api_key`` / ``open_api_key``: AES-256-GCM under K_wrap, AAD = device id;
  the blob is ``version(1) || nonce(12) || ciphertext+tag``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.errors import AuthError, FormatError, LimitError
from bastion.limits import ENROLL_MAX_SEALED_KEY, ENROLL_SECRET_SIZE

CERTIFY_LABEL = b"bastion-enroll-certify-v1\x00"
FINISH_LABEL = b"bastion-enroll-finish-v1\x00"
PROOF_INFO = b"bastion-enroll-proof-v1"
WRAP_INFO = b"bastion-enroll-wrap-v1"
SEALED_VERSION = 1
_NONCE = 12
_TAG = 16


@dataclass(frozen=True, slots=True)
class EnrollmentKeys:
    """The two keys derived from one credential secret."""

    proof: bytes
    wrap: bytes


def certify_qualifying_data(csr_der: bytes) -> bytes:
    """The qualifying data a device passes to TPM2_Certify for this CSR."""
    return hashlib.sha256(CERTIFY_LABEL + csr_der).digest()


def _check_secret(secret: bytes) -> None:
    if len(secret) != ENROLL_SECRET_SIZE:
        raise FormatError(
            f"enrolment credential secret is {len(secret)} bytes, expected {ENROLL_SECRET_SIZE}"
        )


def derive_keys(secret: bytes, challenge_id: str) -> EnrollmentKeys:
    """HKDF-SHA256 the credential secret into the proof key and the wrap key."""
    _check_secret(secret)
    salt = challenge_id.encode()

    def one(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)

    return EnrollmentKeys(proof=one(PROOF_INFO), wrap=one(WRAP_INFO))


def finish_proof(keys: EnrollmentKeys, challenge_id: str) -> bytes:
    """The HMAC a device sends to /v1/enroll/finish to show it activated the credential."""
    return hmac.new(keys.proof, FINISH_LABEL + challenge_id.encode(), hashlib.sha256).digest()


def check_finish_proof(keys: EnrollmentKeys, challenge_id: str, proof: bytes) -> None:
    """Raise AuthError unless ``proof`` is the right HMAC (constant-time compare)."""
    if not hmac.compare_digest(finish_proof(keys, challenge_id), proof):
        raise AuthError(f"enrolment proof for challenge {challenge_id!r} is wrong")


def seal_api_key(keys: EnrollmentKeys, device_id: str, api_key: str) -> bytes:
    """Encrypt the device API key so only the holder of the credential secret reads it."""
    nonce = os.urandom(_NONCE)
    body = AESGCM(keys.wrap).encrypt(nonce, api_key.encode(), device_id.encode())
    return bytes([SEALED_VERSION]) + nonce + body


def open_api_key(keys: EnrollmentKeys, device_id: str, blob: bytes) -> str:
    """Decrypt a sealed API key; FormatError if malformed, AuthError if not ours."""
    if len(blob) > ENROLL_MAX_SEALED_KEY:
        raise LimitError(f"sealed API key is {len(blob)} bytes, limit is {ENROLL_MAX_SEALED_KEY}")
    if len(blob) < 1 + _NONCE + _TAG:
        raise FormatError(
            f"sealed API key is {len(blob)} bytes, expected at least {1 + _NONCE + _TAG}"
        )
    if blob[0] != SEALED_VERSION:
        raise FormatError(f"sealed API key version is {blob[0]}, expected {SEALED_VERSION}")
    nonce, body = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
    try:
        plain = AESGCM(keys.wrap).decrypt(nonce, body, device_id.encode())
    except InvalidTag as exc:
        raise AuthError(
            f"sealed API key for device {device_id!r} does not decrypt with this credential"
        ) from exc
    try:
        return plain.decode("ascii")
    except UnicodeDecodeError as exc:  # pragma: no cover - only a forged but authentic blob
        raise FormatError("sealed API key is not ASCII") from exc
