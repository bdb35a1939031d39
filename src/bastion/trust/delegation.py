"""Delegations: the offline platform root key authorises one online key for one role.

The platform root key is used once, at ``bastion keys init``, and then moves to offline
storage. Whatever it must vouch for later is delegated then: a signed statement
(payload type :data:`PAYLOAD_TYPE`) naming the role and the delegated public key::

    {"type": "delegation", "role": "profile", "key": "<PEM SubjectPublicKeyInfo>",
     "key_id": "<sha256 of the SPKI>"}

``profile``: the delegated key may sign device security profiles (``device create``);
the ROM accepts a profile signed by the root itself or by the key a valid delegation
names. Verification is bytes in, raise on failure.
"""

from __future__ import annotations

import hmac
import json

from cryptography.hazmat.primitives import serialization

from bastion.errors import FormatError, LimitError, SignatureError
from bastion.limits import BOOT_STATEMENT_MAX_SIZE
from bastion.trust.envelope import parse_envelope, sign_envelope, verify_envelope
from bastion.trust.keys import load_public_key
from bastion.trust.signer import PublicKey, Signer, Verifier, key_id

PAYLOAD_TYPE = "application/vnd.bastion.delegation+json"
ROLE_PROFILE = "profile"
ROLES = (ROLE_PROFILE,)


def delegation_statement(role: str, key: PublicKey) -> bytes:
    """The canonical JSON statement delegating ``role`` to ``key``."""
    if role not in ROLES:
        raise FormatError(f"delegation role {role!r}: expected one of {', '.join(ROLES)}")
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    doc = {"type": "delegation", "role": role, "key": pem, "key_id": key_id(key)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign_delegation(root: Signer, role: str, key: PublicKey) -> bytes:
    """The serialised envelope in which ``root`` delegates ``role`` to ``key``."""
    return sign_envelope(PAYLOAD_TYPE, delegation_statement(role, key), [root]).to_bytes()


def verify_delegation(data: bytes, root: Verifier, role: str, *, what: str) -> Verifier:
    """The delegated key of ``role`` if ``data`` is a delegation signed by ``root``.

    ``what`` names the delegation (a file) in errors. Raises SignatureError if the root
    did not sign it or it delegates another role, FormatError if it is malformed.
    """
    if len(data) > BOOT_STATEMENT_MAX_SIZE:
        raise LimitError(f"{what}: {len(data)} bytes exceeds {BOOT_STATEMENT_MAX_SIZE}")
    try:
        payload = verify_envelope(parse_envelope(data), [root], payload_type=PAYLOAD_TYPE)
    except SignatureError as exc:
        raise SignatureError(f"{what}: not signed by the platform root key: {exc}") from exc
    except FormatError as exc:
        raise FormatError(f"{what}: {exc}") from exc
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise FormatError(f"{what}: payload is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("type") != "delegation":
        raise FormatError(f"{what}: payload is not a delegation statement")
    if doc.get("role") != role:
        raise SignatureError(f"{what}: delegates role {doc.get('role')!r}, expected {role!r}")
    pem = doc.get("key")
    if not isinstance(pem, str):
        raise FormatError(f"{what}: delegation names no key")
    verifier = Verifier.of(load_public_key(pem.encode(), what=f"{what} key"))
    if not hmac.compare_digest(verifier.key_id, str(doc.get("key_id", ""))):
        raise FormatError(f"{what}: key id does not match the delegated key")
    return verifier
