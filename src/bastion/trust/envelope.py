"""Signed envelopes (DSSE v1): a typed payload, several signatures, a threshold.

Wire form (the DSSE JSON envelope)::

    {"payload": "<base64>", "payloadType": "<type>",
     "signatures": [{"keyid": "<hex sha256 of SPKI>", "sig": "<base64>"}, ...]}

Each signature covers the pre-authentication encoding
``PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body`` (lengths in
ASCII decimal, ``len(type)`` in UTF-8 bytes), never the raw payload, so a payload can
not be replayed under another type.

:func:`verify_envelope` takes the payload type the caller expects, the trusted
verifiers and a threshold. It counts *distinct trusted keys* with a valid signature:
the same key signing twice counts once; signatures by unknown keys are ignored; an
invalid signature by a trusted key does not count. Below the threshold it raises
:class:`~bastion.errors.SignatureError`. :func:`verify_envelope_result` is the
non-raising form for reports.

The parser is strict and bounded (:data:`~bastion.limits.ENVELOPE_MAX_SIZE`,
:data:`~bastion.limits.ENVELOPE_MAX_SIGNATURES`): duplicate JSON keys, unknown
fields, wrong types and bad base64 raise :class:`~bastion.errors.FormatError`.
This module is pure apart from calling signers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bastion.errors import ConfigError, FormatError, LimitError, SignatureError
from bastion.formats import strict_json
from bastion.limits import ENVELOPE_MAX_SIGNATURES, ENVELOPE_MAX_SIZE
from bastion.trust.signer import Signer, Verifier

#: longest key id / payload type bastion accepts (bytes of UTF-8)
_MAX_KEYID = 256
_MAX_TYPE = 256
_B64_RE = re.compile(rb"^[A-Za-z0-9+/_-]*={0,2}$")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of ``payload`` under ``payload_type``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True, slots=True)
class EnvelopeSignature:
    """One signature: the signer's key id (may be empty) and the raw signature bytes."""

    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE envelope."""

    payload_type: str
    payload: bytes
    signatures: tuple[EnvelopeSignature, ...] = ()

    def signed_bytes(self) -> bytes:
        """The bytes every signature covers (PAE)."""
        return pae(self.payload_type, self.payload)

    def add_signature(self, signer: Signer) -> Envelope:
        """A copy with one more signature by ``signer``."""
        if len(self.signatures) >= ENVELOPE_MAX_SIGNATURES:
            raise LimitError(f"envelope already has {len(self.signatures)} signatures")
        sig = EnvelopeSignature(signer.key_id, signer.sign(self.signed_bytes()))
        return Envelope(self.payload_type, self.payload, (*self.signatures, sig))

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the DSSE wire form."""
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }

    def to_bytes(self) -> bytes:
        """Compact, key-sorted JSON, newline-terminated."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return text.encode("utf-8") + b"\n"

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        """Parse the JSON wire form strictly; FormatError/LimitError on anything else."""
        return parse_envelope(data)


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[Signer]) -> Envelope:
    """A new envelope over ``payload`` signed by each of ``signers``."""
    _check_type(payload_type)
    env = Envelope(payload_type, payload)
    for signer in signers:
        env = env.add_signature(signer)
    return env


def _check_type(payload_type: str) -> None:
    if not payload_type or len(payload_type.encode("utf-8")) > _MAX_TYPE:
        raise FormatError(f"payload type must be 1..{_MAX_TYPE} bytes, got {payload_type!r}")


# --- parsing ---------------------------------------------------------------------------


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"envelope: {what} must be a base64 string, got {type(text).__name__}")
    raw = text.encode("ascii", "replace")
    if not _B64_RE.match(raw):
        raise FormatError(f"envelope: {what} is not base64")
    urlsafe = b"-" in raw or b"_" in raw
    if urlsafe and (b"+" in raw or b"/" in raw):
        raise FormatError(f"envelope: {what} mixes base64 alphabets")
    padded = raw + b"=" * (-len(raw) % 4)
    try:
        if urlsafe:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"envelope: {what} is not base64: {exc}") from exc


def parse_envelope(data: bytes) -> Envelope:
    """Parse a DSSE JSON envelope (see module docstring for the rules)."""
    obj = strict_json.loads(data, what="envelope", max_size=ENVELOPE_MAX_SIZE)
    if not isinstance(obj, dict):
        raise FormatError(f"envelope must be a JSON object, got {type(obj).__name__}")
    expected = {"payload", "payloadType", "signatures"}
    if set(obj) != expected:
        missing, extra = expected - set(obj), set(obj) - expected
        raise FormatError(f"envelope fields: missing {sorted(missing)}, unexpected {sorted(extra)}")
    ptype = obj["payloadType"]
    if not isinstance(ptype, str):
        raise FormatError("envelope: payloadType must be a string")
    _check_type(ptype)
    payload = _b64(obj["payload"], "payload")
    sigs = obj["signatures"]
    if not isinstance(sigs, list):
        raise FormatError("envelope: signatures must be a list")
    if len(sigs) > ENVELOPE_MAX_SIGNATURES:
        raise LimitError(f"envelope has {len(sigs)} signatures, limit is {ENVELOPE_MAX_SIGNATURES}")
    out = []
    for i, entry in enumerate(sigs):
        if not isinstance(entry, dict) or "sig" not in entry or set(entry) - {"keyid", "sig"}:
            raise FormatError(f"envelope: signature {i} must be an object with sig and keyid")
        keyid = entry.get("keyid", "")
        if not isinstance(keyid, str) or len(keyid) > _MAX_KEYID:
            raise FormatError(f"envelope: signature {i} keyid must be a string <= {_MAX_KEYID}")
        out.append(EnvelopeSignature(keyid, _b64(entry["sig"], f"signature {i}")))
    return Envelope(ptype, payload, tuple(out))


# --- verification ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnvelopeVerification:
    """What verification found: which trusted keys signed, and whether that is enough."""

    payload_type: str
    payload: bytes
    threshold: int
    valid_keyids: tuple[str, ...]
    failures: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the threshold of distinct trusted keys is met and the type matched."""
        return not self.failures and len(self.valid_keyids) >= self.threshold


def _trusted_map(trusted: Iterable[Verifier] | Mapping[str, Verifier]) -> dict[str, Verifier]:
    if isinstance(trusted, Mapping):
        return dict(trusted)
    return {v.key_id: v for v in trusted}


def verify_envelope_result(
    envelope: Envelope,
    trusted: Iterable[Verifier] | Mapping[str, Verifier],
    *,
    payload_type: str,
    threshold: int = 1,
) -> EnvelopeVerification:
    """Check ``envelope`` without raising on a failed check (ConfigError on bad arguments)."""
    keys = _trusted_map(trusted)
    if threshold < 1:
        raise ConfigError(f"threshold must be at least 1, got {threshold}")
    if threshold > len(keys):
        raise ConfigError(f"threshold {threshold} can never be met by {len(keys)} trusted key(s)")
    failures: list[str] = []
    if envelope.payload_type != payload_type:
        failures.append(f"payload type is {envelope.payload_type!r}, expected {payload_type!r}")
        return EnvelopeVerification(envelope.payload_type, b"", threshold, (), tuple(failures))
    message = envelope.signed_bytes()
    valid: list[str] = []
    for sig in envelope.signatures:
        candidates: Sequence[Verifier]
        if sig.keyid:
            v = keys.get(sig.keyid)
            candidates = [v] if v is not None else []
        else:
            candidates = list(keys.values())
        for verifier in candidates:
            if verifier.key_id in valid:
                continue
            try:
                verifier.verify(message, sig.sig)
            except SignatureError:
                continue
            valid.append(verifier.key_id)
            break
    if len(valid) < threshold:
        failures.append(
            f"{len(valid)} of {threshold} required signatures from distinct trusted keys "
            f"({len(keys)} trusted, {len(envelope.signatures)} signature(s) present)"
        )
    return EnvelopeVerification(
        envelope.payload_type, envelope.payload, threshold, tuple(valid), tuple(failures)
    )


def verify_envelope(
    envelope: Envelope,
    trusted: Iterable[Verifier] | Mapping[str, Verifier],
    *,
    payload_type: str,
    threshold: int = 1,
) -> bytes:
    """Return the payload if ``threshold`` distinct trusted keys signed it under
    ``payload_type``; raise SignatureError otherwise."""
    result = verify_envelope_result(
        envelope, trusted, payload_type=payload_type, threshold=threshold
    )
    if not result.ok:
        raise SignatureError("envelope: " + "; ".join(result.failures))
    return result.payload
