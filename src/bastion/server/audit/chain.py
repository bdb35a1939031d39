"""Pure verification of the audit chain: rows, a key and a checkpoint in, raise on tamper.

Nothing here touches the database, a file or the clock: :mod:`.service` reads rows and
hands them over, :mod:`.keys` opens keys. Three things are checked:

* the **hash chain**: every entry's ``hash`` is SHA-256 over a canonical JSON encoding
  of its fields and the previous hash (starting from :data:`GENESIS`), so an edit,
  a removal or a reorder breaks a link;
* the **MACs**: every entry carries ``mac`` = MAC or signature, by the audit key kept
  outside the database, over ``"bastion-audit-entry-v1" || server || seq || hash``; the
  head row carries one over ``"bastion-audit-head-v1" || server || seq || hash``. Someone
  who can write the database but not use the key cannot make a new valid entry or head;
* a **checkpoint** (optional): a head exported earlier and kept by an auditor
  (:class:`Checkpoint`, document format in docs/server.md). The chain must still
  contain the checkpoint's entry with the same hash, which catches a chain cut back
  and given an old, genuinely MACed head (from a backup, say).

Every failure raises :class:`~bastion.errors.TamperError` with ``stage="audit"``
(a forged checkpoint: :class:`~bastion.errors.SignatureError`; a malformed one:
:class:`~bastion.errors.FormatError`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from bastion import limits
from bastion.errors import FormatError, SignatureError, TamperError
from bastion.trust.signer import SignatureScheme, Signer, Verifier

GENESIS = "0" * 64
HMAC_ALG = "hmac-sha256"
CHECKPOINT_FORMAT = "bastion-audit-checkpoint"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SERVER_ID = re.compile(r"^[0-9a-f]{32}$")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def format_time(at: dt.datetime) -> str:
    """UTC with microseconds and a ``Z``: the one spelling hashed and exported."""
    return at.astimezone(dt.UTC).strftime(_TIME_FORMAT)


def entry_hash(
    *,
    seq: int,
    at: dt.datetime,
    actor: str,
    event: str,
    org_id: str | None,
    details: str,
    prev: str,
) -> str:
    """The SHA-256 (hex) that chains one entry to ``prev``."""
    body = canonical(
        {
            "seq": seq,
            "at": format_time(at),
            "actor": actor,
            "event": event,
            "org": org_id,
            "details": details,
            "prev": prev,
        }
    )
    return hashlib.sha256(body.encode()).hexdigest()


def entry_mac_input(server_id: str, seq: int, digest: str) -> bytes:
    """The bytes an entry's MAC covers (its hash covers everything else)."""
    return f"bastion-audit-entry-v1\n{server_id}\n{seq}\n{digest}".encode()


def head_mac_input(server_id: str, seq: int, digest: str) -> bytes:
    """The bytes the head row's MAC covers (a different domain from entries)."""
    return f"bastion-audit-head-v1\n{server_id}\n{seq}\n{digest}".encode()


# --- keys ----------------------------------------------------------------------------------


class AuditVerifier(Protocol):
    """What checks audit MACs: an HMAC key, or the public half of a Signer's key."""

    @property
    def alg(self) -> str:
        """``hmac-sha256`` or a :class:`~bastion.trust.signer.SignatureScheme` value."""
        ...

    @property
    def key_id(self) -> str:
        """Hex identifier of the key (never the key)."""
        ...

    def check(self, data: bytes, tag: bytes) -> None:
        """Raise SignatureError unless ``tag`` is this key's over ``data``."""
        ...


class AuditKey(AuditVerifier, Protocol):
    """An audit verifier that can also make tags (the server's key)."""

    def tag(self, data: bytes) -> bytes:
        """The MAC or signature over ``data``."""
        ...


class HmacAuditKey:
    """HMAC-SHA-256 with a secret kept in a file outside the database."""

    __slots__ = ("__secret", "_key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < limits.AUDIT_HMAC_KEY_MIN_SIZE:
            raise FormatError(
                f"audit HMAC key is {len(secret)} bytes, expected at least "
                f"{limits.AUDIT_HMAC_KEY_MIN_SIZE}"
            )
        self.__secret = secret
        self._key_id = hmac.new(secret, b"bastion-audit-key-id", hashlib.sha256).hexdigest()

    @property
    def alg(self) -> str:
        return HMAC_ALG

    @property
    def key_id(self) -> str:
        return self._key_id

    def tag(self, data: bytes) -> bytes:
        return hmac.new(self.__secret, data, hashlib.sha256).digest()

    def check(self, data: bytes, tag: bytes) -> None:
        if not hmac.compare_digest(self.tag(data), tag):
            raise SignatureError(f"HMAC by audit key {self._key_id[:16]}... does not verify")

    def __repr__(self) -> str:
        return f"HmacAuditKey(key_id={self._key_id[:16]}...)"


class SignerAuditKey:
    """A :class:`~bastion.trust.signer.Signer` (``file:`` or ``tpm:``) used as audit key."""

    __slots__ = ("_signer", "_verifier")

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._verifier = Verifier.of(signer.public_key(), signer.scheme)

    @property
    def alg(self) -> str:
        return str(self._signer.scheme)

    @property
    def key_id(self) -> str:
        return self._signer.key_id

    def tag(self, data: bytes) -> bytes:
        return self._signer.sign(data)

    def check(self, data: bytes, tag: bytes) -> None:
        self._verifier.verify(data, tag)


class PublicAuditKey:
    """The public half of a Signer audit key: verifies, cannot tag (for auditors)."""

    __slots__ = ("_verifier",)

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier

    @property
    def alg(self) -> str:
        return str(self._verifier.scheme)

    @property
    def key_id(self) -> str:
        return self._verifier.key_id

    def check(self, data: bytes, tag: bytes) -> None:
        self._verifier.verify(data, tag)


def encode_tag(tag: bytes) -> str:
    return base64.b64encode(tag).decode()


def decode_tag(text: str | None, what: str) -> bytes:
    """A stored MAC; TamperError if missing or not base64."""
    if not text:
        raise TamperError(
            f"{what} has no MAC: it was stripped or written without the key", stage="audit"
        )
    if len(text) > limits.AUDIT_MAC_MAX_LENGTH:
        raise TamperError(f"{what}: MAC is {len(text)} characters long", stage="audit")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TamperError(f"{what}: MAC is not base64", stage="audit") from exc


# --- checkpoints -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed chain head for an auditor to keep: ``seq``, ``hash`` and ``time``."""

    server: str
    seq: int
    hash: str
    time: str
    alg: str
    key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        """What the signature covers: canonical JSON of every field but the signature."""
        return canonical(
            {
                "format": CHECKPOINT_FORMAT,
                "version": 1,
                "server": self.server,
                "seq": self.seq,
                "hash": self.hash,
                "time": self.time,
                "alg": self.alg,
                "key_id": self.key_id,
            }
        ).encode()

    def to_bytes(self) -> bytes:
        doc = json.loads(self.signed_bytes())
        doc["signature"] = encode_tag(self.signature)
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> Checkpoint:
        """Parse a checkpoint file; FormatError if malformed (the signature is not checked)."""
        if len(data) > limits.AUDIT_CHECKPOINT_MAX_SIZE:
            raise FormatError(
                f"audit checkpoint is {len(data)} bytes, limit {limits.AUDIT_CHECKPOINT_MAX_SIZE}"
            )

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, value in pairs:
                if key in out:
                    raise FormatError(f"audit checkpoint: duplicate key {key!r}")
                out[key] = value
            return out

        try:
            doc = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"audit checkpoint is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise FormatError("audit checkpoint: expected a JSON object")
        known = {"format", "version", "server", "seq", "hash", "time", "alg", "key_id"}
        if set(doc) != known | {"signature"}:
            raise FormatError(
                f"audit checkpoint: fields {sorted(doc)}, expected {sorted(known | {'signature'})}"
            )
        if (
            doc["format"] != CHECKPOINT_FORMAT
            or type(doc["version"]) is not int
            or doc["version"] != 1
        ):
            raise FormatError(f"audit checkpoint: expected format {CHECKPOINT_FORMAT!r} version 1")
        seq = doc["seq"]
        if type(seq) is not int or not 0 <= seq < 2**63:
            raise FormatError(f"audit checkpoint: seq {seq!r} is not a sequence number")
        for name, pattern in (("hash", _HEX64), ("key_id", _HEX64), ("server", _SERVER_ID)):
            if not isinstance(doc[name], str) or not pattern.match(doc[name]):
                raise FormatError(f"audit checkpoint: {name} {doc[name]!r} is malformed")
        if not isinstance(doc["time"], str):
            raise FormatError("audit checkpoint: time is not a string")
        try:
            dt.datetime.strptime(doc["time"], _TIME_FORMAT)
        except ValueError as exc:
            raise FormatError(f"audit checkpoint: time {doc['time']!r} is malformed") from exc
        alg = doc["alg"]
        if not isinstance(alg, str) or (
            alg != HMAC_ALG and alg not in {s.value for s in SignatureScheme}
        ):
            raise FormatError(f"audit checkpoint: unknown alg {alg!r}")
        sig = doc["signature"]
        if not isinstance(sig, str) or len(sig) > limits.AUDIT_MAC_MAX_LENGTH:
            raise FormatError("audit checkpoint: signature is not a short string")
        try:
            signature = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FormatError("audit checkpoint: signature is not base64") from exc
        return cls(doc["server"], seq, doc["hash"], doc["time"], alg, doc["key_id"], signature)


def make_checkpoint(
    key: AuditKey, server: str, seq: int, digest: str, at: dt.datetime
) -> Checkpoint:
    """Sign a head with the audit key."""
    unsigned = Checkpoint(server, seq, digest, format_time(at), key.alg, key.key_id, b"")
    return Checkpoint(
        server, seq, digest, unsigned.time, key.alg, key.key_id, key.tag(unsigned.signed_bytes())
    )


def verify_checkpoint(data: bytes, key: AuditVerifier) -> Checkpoint:
    """Parse and check a checkpoint file against ``key``; raise unless it is genuine."""
    cp = Checkpoint.parse(data)
    if cp.key_id != key.key_id or cp.alg != key.alg:
        raise SignatureError(
            f"audit checkpoint was made by key {cp.key_id[:16]}... ({cp.alg}), expected "
            f"{key.key_id[:16]}... ({key.alg})"
        )
    try:
        key.check(cp.signed_bytes(), cp.signature)
    except SignatureError as exc:
        raise SignatureError(f"audit checkpoint signature is forged or damaged: {exc}") from exc
    return cp


# --- the chain ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored entry, as read from the database."""

    seq: int
    at: dt.datetime
    actor: str
    event: str
    org_id: str | None
    details: str
    prev_hash: str
    hash: str
    mac: str | None


@dataclass(frozen=True, slots=True)
class AuditHeadRow:
    """The stored head row."""

    seq: int
    hash: str
    server_id: str | None
    mac: str | None


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of a successful verification."""

    entries: int
    head_hash: str
    server_id: str | None = None
    key_id: str | None = None
    checkpoint_seq: int | None = None


def _tamper(message: str) -> TamperError:
    return TamperError(message, stage="audit")


def verify_rows(
    rows: Iterable[Any],
    head: AuditHeadRow,
    key: AuditVerifier | None,
    checkpoint: Checkpoint | None = None,
) -> ChainReport:
    """Check entries (in ``seq`` order) against the head, the key and a checkpoint.

    ``key=None`` checks the hash chain only (legacy rows written before MACs, when the
    server seals them). A checkpoint must already be signature-checked
    (:func:`verify_checkpoint`). Raises TamperError naming the first bad entry.
    """
    server = head.server_id
    if key is not None and (server is None or not _SERVER_ID.match(server)):
        raise _tamper(f"audit head has no valid server id ({server!r}): it was never sealed")
    if checkpoint is not None:
        if key is None:
            raise _tamper("a checkpoint needs the audit key")
        if checkpoint.server != server:
            raise _tamper(
                f"checkpoint is from audit server {checkpoint.server}, this chain is {server}"
            )
    prev = GENESIS
    expected_seq = 1
    for entry in rows:
        if entry.seq != expected_seq:
            raise _tamper(
                f"audit entry {expected_seq} is missing or out of order: found seq {entry.seq}"
            )
        if entry.prev_hash != prev:
            raise _tamper(
                f"audit entry {entry.seq}: previous-hash link broken "
                f"(expected {prev[:16]}..., found {entry.prev_hash[:16]}...)"
            )
        digest = entry_hash(
            seq=entry.seq,
            at=entry.at,
            actor=entry.actor,
            event=entry.event,
            org_id=entry.org_id,
            details=entry.details,
            prev=prev,
        )
        if digest != entry.hash:
            raise _tamper(
                f"audit entry {entry.seq} ({entry.event}) was edited: content hash "
                f"{digest[:16]}... does not match stored {entry.hash[:16]}..."
            )
        if key is not None:
            what = f"audit entry {entry.seq} ({entry.event})"
            tag = decode_tag(entry.mac, what)
            try:
                key.check(entry_mac_input(server or "", entry.seq, digest), tag)
            except SignatureError as exc:
                raise _tamper(
                    f"{what}: MAC does not verify with audit key {key.key_id[:16]}... "
                    "(entry forged, or the wrong key)"
                ) from exc
        if checkpoint is not None and entry.seq == checkpoint.seq and digest != checkpoint.hash:
            raise _tamper(
                f"audit entry {entry.seq} has hash {digest[:16]}... but the checkpoint of "
                f"{checkpoint.time} recorded {checkpoint.hash[:16]}...: the chain was rewritten"
            )
        prev = digest
        expected_seq += 1
    count = expected_seq - 1
    if count != head.seq or prev != head.hash:
        raise _tamper(
            f"audit chain ends at entry {count} ({prev[:16]}...) but the head records "
            f"entry {head.seq} ({head.hash[:16]}...): entries were removed from the end"
        )
    if key is not None:
        tag = decode_tag(head.mac, "audit head")
        try:
            key.check(head_mac_input(server or "", head.seq, head.hash), tag)
        except SignatureError as exc:
            raise _tamper(
                f"audit head (entry {head.seq}) MAC does not verify with audit key "
                f"{key.key_id[:16]}...: head rewritten, or the wrong key"
            ) from exc
    if checkpoint is not None:
        if checkpoint.seq > count:
            raise _tamper(
                f"audit chain has {count} entries but the checkpoint of {checkpoint.time} "
                f"recorded {checkpoint.seq}: entries were removed from the end (or the "
                "checkpoint is not of this chain)"
            )
        if checkpoint.seq == 0 and checkpoint.hash != GENESIS:
            raise _tamper("checkpoint of an empty chain names a hash other than genesis")
    return ChainReport(
        entries=count,
        head_hash=prev,
        server_id=server,
        key_id=key.key_id if key is not None else None,
        checkpoint_seq=checkpoint.seq if checkpoint is not None else None,
    )
