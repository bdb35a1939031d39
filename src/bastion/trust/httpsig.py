"""Device request signatures: RFC 9421 HTTP Message Signatures made with the TPM key.

ADR 0032. The agent signs every request and the WebSocket upgrade with the device's
enrolled identity key (ECC P-256, inside the TPM); the server verifies the signature
against the public key of the certificate it issued at enrolment. The signature base
and the structured header fields are built and parsed by ``http-message-signatures``;
this module fixes the profile and makes the checks bastion needs:

* label ``bastion``, ``alg="ecdsa-p256-sha256"``, ``tag="bastion-device"``;
* covered components ``"@method" "@path" "@query" "content-digest"`` (all required);
* parameters ``created`` (within ``max_skew`` of the verifier's clock, either way),
  ``nonce`` (1..``DEVICE_SIGNATURE_MAX_NONCE`` characters; replay detection is the
  caller's: the server keeps a per-device nonce table), ``keyid`` (the device id);
* ``Content-Digest`` (RFC 9530, sha-256) is always present; whoever holds the body
  checks it with :func:`check_content_digest`.

:func:`sign_request` takes a ``sign(base) -> r||s`` callable, so the private key
never passes through here (the device gives a TPM signer). :func:`verify_request`
is pure: method, target, headers, public key and "now" in; a :class:`SignedRequest`
out, or :class:`~bastion.errors.SignatureError`/:class:`~bastion.errors.ExpiredError`/
:class:`~bastion.errors.FormatError` naming what was expected and what came.

Two ways to one verdict (ADR 0049): a request whose signature headers and target are
in the one canonical form :func:`sign_request` writes (:func:`canonical_base` matches
them whole) has its signature base built here, a few string joins, and its signature
checked with ``cryptography``; any other request, however slightly different, goes to
the library's general verifier, which decides. The canonical base is proved equal to
the library's, and both verdicts equal, in tests/conformance/httpsig/.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import http_sf
from cryptography.exceptions import InvalidSignature as InvalidECDSASignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    InvalidSignature,
    algorithms,
)

from bastion import limits
from bastion.errors import ExpiredError, FormatError, SignatureError

LABEL = "bastion"
TAG = "bastion-device"
ALGORITHM = "ecdsa-p256-sha256"
COMPONENTS = ("@method", "@path", "@query", "content-digest")
#: the URL the library resolves components from: only path and query are covered
_ORIGIN = "https://device.invalid"
SIGNATURE_HEADERS = ("signature-input", "signature", "content-digest")

#: sign(signature base) -> raw r||s (64 bytes), made by the device's identity key
SignFunction = Callable[[bytes], bytes]

# The canonical form (ADR 0049): exactly what sign_request writes (the library's
# serialisation, its parameter order), with characters that need no escaping or
# normalisation. Anything else is the library's to judge.
_CANONICAL_INPUT = re.compile(
    r'bastion=(\("@method" "@path" "@query" "content-digest"\)'
    r';created=([0-9]{1,12});keyid="([A-Za-z0-9._:-]{1,64})"'
    rf';alg="{ALGORITHM}";nonce="([A-Za-z0-9._~-]{{1,{limits.DEVICE_SIGNATURE_MAX_NONCE}}})"'
    rf';tag="{TAG}")'
)
_CANONICAL_SIGNATURE = re.compile(r"bastion=:([A-Za-z0-9+/]{86}==):")
_CANONICAL_DIGEST = re.compile(r"sha-256=:[A-Za-z0-9+/]{43}=:")
# no percent escapes, no empty or dot segments: the path is the target's own text
_SEGMENT = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*"
_CANONICAL_TARGET = re.compile(rf"(/(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?)(?:\?([A-Za-z0-9._~=&-]*))?")
_CANONICAL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"})
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True, slots=True)
class CanonicalSignature:
    """A signature in the canonical form: its base, its raw r||s and its parameters."""

    base: bytes
    signature: bytes
    key_id: str
    created: int
    nonce: str


def canonical_base(
    method: str, target: str, headers: Mapping[str, str]
) -> CanonicalSignature | None:
    """The signature base and parameters of a request in the canonical form; None for
    any other request (the library's verifier judges it). Raises like
    :func:`verify_request` for a missing or oversize signature header."""
    found = _CANONICAL_TARGET.fullmatch(target)
    if found is None or method not in _CANONICAL_METHODS:
        return None
    signature_input = _CANONICAL_INPUT.fullmatch(_header(headers, "signature-input"))
    signature = _CANONICAL_SIGNATURE.fullmatch(_header(headers, "signature"))
    digest = _header(headers, "content-digest")
    if signature_input is None or signature is None or not _CANONICAL_DIGEST.fullmatch(digest):
        return None
    query = found.group(2)
    params, created, key_id, nonce = signature_input.groups()
    base = (
        f'"@method": {method}\n"@path": {found.group(1)}\n"@query": ?{query or ""}\n'
        f'"content-digest": {digest}\n"@signature-params": {params}'
    )
    try:
        raw = base64.b64decode(signature.group(1), validate=True)
    except binascii.Error:  # pragma: no cover - the pattern admits only valid base64
        return None
    return CanonicalSignature(base.encode("ascii"), raw, key_id, int(created), nonce)


@dataclass(slots=True)
class _Message:
    """The request as the library sees it (method, absolute URL, headers)."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def _target(target: str) -> str:
    if not target.startswith("/") or len(target) > limits.DEVICE_SIGNATURE_MAX_TARGET:
        raise FormatError(
            f"request target must be an absolute path of at most "
            f"{limits.DEVICE_SIGNATURE_MAX_TARGET} characters, got {target[:60]!r}"
        )
    return _ORIGIN + target


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` field value for ``body`` (sha-256)."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def check_content_digest(value: str, body: bytes) -> None:
    """Raise SignatureError unless ``value`` carries the sha-256 digest of ``body``."""
    if len(value) > limits.DEVICE_SIGNATURE_MAX_HEADER:
        raise FormatError(f"Content-Digest is over {limits.DEVICE_SIGNATURE_MAX_HEADER} bytes")
    try:
        parsed = http_sf.parse(value.encode(), tltype="dictionary")
    except Exception as exc:  # http_sf raises ValueError and friends
        raise FormatError(f"Content-Digest is not a structured dictionary: {exc}") from exc
    member = parsed.get("sha-256") if isinstance(parsed, dict) else None
    got = member[0] if isinstance(member, tuple) else None
    if not isinstance(got, bytes):
        raise SignatureError("Content-Digest has no sha-256 member (the only one accepted)")
    want = hashlib.sha256(body).digest()
    if not hmac.compare_digest(got, want):
        raise SignatureError(
            f"Content-Digest sha-256 {got.hex()[:16]}... does not match the body "
            f"({want.hex()[:16]}...)"
        )


#: hex digits of a nonce's time prefix (milliseconds since 1970: enough until year 10889)
NONCE_TIME_DIGITS = 12


def request_nonce(at: float) -> str:
    """A fresh nonce for a request signed at ``at`` (POSIX seconds): its millisecond as
    :data:`NONCE_TIME_DIGITS` lower-case hex digits, then 128 random bits (22 base64url
    characters). A fleet's nonces sort by time, so the server's nonce key, which leads
    with the nonce, is written at its end (ADR 0050); the random part keeps each one
    unique. The verifier accepts any nonce of the RFC's form; this is only the agent's."""
    if not 0 <= at < 16**NONCE_TIME_DIGITS / 1000:  # also refuses NaN and infinity
        raise FormatError(f"cannot make a nonce for time {at!r}: out of range")
    return f"{int(at * 1000):0{NONCE_TIME_DIGITS}x}{secrets.token_urlsafe(16)}"


def sign_request(
    method: str,
    target: str,
    body: bytes,
    *,
    key_id: str,
    created: int,
    nonce: str,
    sign: SignFunction,
) -> dict[str, str]:
    """The ``Content-Digest``, ``Signature-Input`` and ``Signature`` headers for a request."""
    message = _Message(method.upper(), _target(target), {"Content-Digest": content_digest(body)})
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ECDSA_P256_SHA256)
    try:
        prepared = signer.prepare(
            message,
            key_id=key_id,
            created=dt.datetime.fromtimestamp(created, dt.UTC),
            nonce=nonce,
            label=LABEL,
            tag=TAG,
            covered_component_ids=COMPONENTS,
            use_existing_digest=True,
        )
        raw = sign(prepared.signature_base)
        signer.apply(message, prepared, raw)
    except (HTTPMessageSignaturesException, ValueError) as exc:  # ValueError: http_sf
        raise FormatError(f"cannot sign {method} {target[:60]}: {exc}") from exc
    return dict(message.headers)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a verified signature says: who signed, when, with which nonce."""

    key_id: str
    created: int
    nonce: str


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            if len(value) > limits.DEVICE_SIGNATURE_MAX_HEADER:
                raise FormatError(f"{name} is over {limits.DEVICE_SIGNATURE_MAX_HEADER} bytes")
            return value
    raise SignatureError(f"the request has no {name} header (expected an RFC 9421 signature)")


def has_signature(headers: Mapping[str, str]) -> bool:
    """True when the request carries a ``Signature-Input`` header."""
    return any(key.lower() == "signature-input" for key in headers)


def signed_key_id(headers: Mapping[str, str]) -> str:
    """The ``keyid`` of the ``bastion`` signature, unverified (to find the key)."""
    raw = _header(headers, "signature-input")
    canonical = _CANONICAL_INPUT.fullmatch(raw)
    if canonical is not None:
        return canonical.group(3)
    try:
        parsed = http_sf.parse(raw.encode(), tltype="dictionary")
    except Exception as exc:
        raise FormatError(f"Signature-Input is not a structured dictionary: {exc}") from exc
    member = parsed.get(LABEL) if isinstance(parsed, dict) else None
    if not isinstance(member, tuple) or not isinstance(member[1], dict):
        raise SignatureError(f"Signature-Input has no {LABEL!r} signature")
    key_id = member[1].get("keyid")
    if not isinstance(key_id, str) or not key_id or len(key_id) > 64:
        raise SignatureError("the signature's keyid is missing or not a short string")
    return key_id


class _FixedKey:
    def __init__(self, key: ec.EllipticCurvePublicKey, key_id: str) -> None:
        self.key = key
        self.key_id = key_id

    def resolve_public_key(self, key_id: str) -> Any:
        if key_id != self.key_id:
            raise SignatureError(f"signature keyid {key_id!r} is not {self.key_id!r}")
        return self.key

    def resolve_private_key(self, key_id: str) -> Any:  # pragma: no cover - never signs
        raise SignatureError("the verifier holds no private key")


class _Verifier(HTTPMessageVerifier):
    """The library's verifier; time checks are ours (the caller's clock, both ways)."""

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        del sig_input, max_age


def verify_request(  # noqa: PLR0917 - the request, the key, the clock and the window
    method: str,
    target: str,
    headers: Mapping[str, str],
    public_key: ec.EllipticCurvePublicKey,
    key_id: str,
    now: dt.datetime,
    max_skew: int = limits.DEVICE_SIGNATURE_MAX_SKEW_SECONDS,
) -> SignedRequest:
    """Verify the ``bastion`` signature of a request made by ``key_id`` (module docstring).

    The caller checks ``Content-Digest`` against the body and the nonce against replay.
    """
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise SignatureError(f"device {key_id} has no ECC P-256 key; expected one for {ALGORITHM}")
    method = method.upper()
    url = _target(target)
    canonical = canonical_base(method, target, headers)
    if canonical is not None:
        created, nonce = _verify_canonical(canonical, public_key, key_id)
    else:
        created, nonce = _verify_general(method, url, headers, public_key, key_id)
    skew = created - int(now.timestamp())
    if abs(skew) > max_skew:
        raise ExpiredError(
            f"signature created {skew:+d} s from the server clock; the window is +-{max_skew} s"
        )
    return SignedRequest(key_id=key_id, created=created, nonce=nonce)


def _verify_canonical(
    canonical: CanonicalSignature, public_key: ec.EllipticCurvePublicKey, key_id: str
) -> tuple[int, str]:
    if canonical.key_id != key_id:
        raise SignatureError(f"signature keyid {canonical.key_id!r} is not {key_id!r}")
    r = int.from_bytes(canonical.signature[:32], "big")
    s = int.from_bytes(canonical.signature[32:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), canonical.base, _ECDSA_SHA256)
    except InvalidECDSASignature:
        raise SignatureError(
            f"request signature of device {key_id} refused: signature does not verify"
        ) from None
    return canonical.created, canonical.nonce


def _verify_general(
    method: str,
    url: str,
    headers: Mapping[str, str],
    public_key: ec.EllipticCurvePublicKey,
    key_id: str,
) -> tuple[int, str]:
    message = _Message(method, url, {name: _header(headers, name) for name in SIGNATURE_HEADERS})
    verifier = _Verifier(
        signature_algorithm=algorithms.ECDSA_P256_SHA256,
        key_resolver=_FixedKey(public_key, key_id),  # type: ignore[arg-type]
    )
    try:
        results = verifier.verify(
            message,
            max_age=None,
            expect_tag=TAG,
            expect_label=LABEL,
            require_components=COMPONENTS,
        )
    except SignatureError:
        raise
    except (InvalidSignature, HTTPMessageSignaturesException) as exc:
        raise SignatureError(f"request signature of device {key_id} refused: {exc}") from exc
    params = results[0].parameters
    if params.get("alg") != ALGORITHM:
        raise SignatureError(f"signature alg is {params.get('alg')!r}, expected {ALGORITHM!r}")
    created = params.get("created")
    nonce = params.get("nonce")
    if not isinstance(created, int):
        raise SignatureError("the signature has no created time")
    if not isinstance(nonce, str) or not 0 < len(nonce) <= limits.DEVICE_SIGNATURE_MAX_NONCE:
        raise SignatureError(
            f"the signature needs a nonce of 1..{limits.DEVICE_SIGNATURE_MAX_NONCE} characters"
        )
    return created, nonce
