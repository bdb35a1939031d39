"""TPM-sealed LUKS2 keyslots in systemd's ``systemd-tpm2`` token format; lock after unlock.

Enrolment (what ``systemd-cryptenroll --tpm2-device=... --tpm2-pcrs=...`` does, legacy
transient-primary model): a random 32-byte secret is sealed through the :class:`Tpm`
protocol under the storage primary (systemd's ECC template) to PolicyPCR over the chosen
PCRs, with either their current values or given future values. The keyslot passphrase is
``base64(secret)`` on a minimal-PBKDF keyslot (pbkdf2-sha512, 1000 iterations: the secret
has 256 bits of entropy) and the token is::

    {"type": "systemd-tpm2", "keyslots": ["N"], "tpm2-blob": base64(TPM2B_PRIVATE ||
     TPM2B_PUBLIC), "tpm2-pcrs": [7, 15], "tpm2-pcr-bank": "sha256",
     "tpm2-primary-alg": "ecc", "tpm2-policy-hash": "<hex>", "tpm2-pin": false}

so systemd-cryptsetup and ``cryptsetup luksDump`` (systemd's token plugin) understand a
bastion enrolment and bastion unlocks volumes enrolled by systemd-cryptenroll.

Unlock: for each ``systemd-tpm2`` token, recompute the policy digest from the current PCR
values and fail fast with PolicyError when it differs from ``tpm2-policy-hash`` (as
systemd does), else unseal and open the named keyslot. Tokens with a PIN, pcrlock or an
SRK handle are refused with ConfigError.

Signed PCR policies (``systemd-cryptenroll --tpm2-public-key=pub.pem
--tpm2-public-key-pcrs=11``): :func:`enroll_tpm_signed` seals to TPM2_PolicyAuthorize by
the authority's RSA key (then PolicyPCR over the literal ``tpm2-pcrs``, if any) and writes
``tpm2_pubkey`` (base64 of the PEM as given) and ``tpm2_pubkey_pcrs``, as systemd 252 does.
Such a token unlocks only with a ``.pcrsig`` (``pcr_signature=``) whose entry signs the
current PCR 11 value (:mod:`bastion.storage.signed_policy`); updates never reseal it.

Lock: :func:`lock` extends PCR 15 (UAPI PCR registry: "root volume key", where
systemd-cryptsetup's ``tpm2-measure-pcr=`` measures too) with a measurement of the volume,
so any token bound to PCR 15's boot-time value cannot be unsealed again until the next
boot. Unlock every volume first, then lock. Enrolments include PCR 15 by default.

Re-seal for updates: :func:`reseal` enrolls a new keyslot and token for new (predicted)
PCR values, then removes the old pair; each step is one crash-safe header commit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bastion import limits
from bastion.errors import (
    BastionError,
    ConfigError,
    FormatError,
    NotFoundError,
    PolicyError,
)
from bastion.formats.luks2 import Token
from bastion.storage import signed_policy
from bastion.storage.luks2_volume import MINIMAL_KDF, Luks2Volume
from bastion.tpm import pcr as pcrmath
from bastion.tpm.base import HashAlg, PcrSelection, SealedObject, Tpm

TOKEN_TYPE = "systemd-tpm2"
LOCK_PCR = 15
DEFAULT_PCRS = (7, LOCK_PCR)
SECRET_SIZE = 32
_UNSUPPORTED = ("tpm2_pcrlock", "tpm2_srk")
SIGNED_PCRS = (11,)
#: PCRs a signed-policy token also binds by value by default, as systemd 252 does: PCR 11
#: alone does not prove Secure Boot was on (a foreign boot loader can replay it)
SIGNED_LITERAL_PCRS = (7,)
_KNOWN = (
    "tpm2-blob",
    "tpm2-pcrs",
    "tpm2-pcr-bank",
    "tpm2-primary-alg",
    "tpm2-policy-hash",
    "tpm2-pin",
    "tpm2_pubkey",
    "tpm2_pubkey_pcrs",
)


def parse_pcr_list(text: str, *, allow_empty: bool = False) -> tuple[int, ...]:
    """systemd's spelling ``7+15`` (also ``7,15``) -> (7, 15); ``""`` -> () if allowed."""
    parts = [p for p in re.split(r"[+,]", text.strip()) if p]
    if not parts and allow_empty and not text.strip():
        return ()
    if not parts or not all(p.isdigit() and int(p) < 24 for p in parts):
        raise ConfigError(f"--tpm2-pcrs {text!r}: expected PCR numbers 0..23 like 7+15")
    return tuple(sorted({int(p) for p in parts}))


def split_blob(blob: bytes) -> SealedObject:
    """``tpm2-blob`` = TPM2B_PRIVATE || TPM2B_PUBLIC (each u16 size-prefixed)."""
    if len(blob) > 2 * limits.TPM2B_MAX_SIZE:
        raise FormatError(f"tpm2-blob is {len(blob)} bytes, too large")
    parts: list[bytes] = []
    off = 0
    for what in ("TPM2B_PRIVATE", "TPM2B_PUBLIC"):
        if off + 2 > len(blob):
            raise FormatError(f"tpm2-blob truncated before its {what}")
        size = int.from_bytes(blob[off : off + 2], "big")
        if size == 0 or off + 2 + size > len(blob):
            raise FormatError(f"tpm2-blob: {what} of {size} bytes does not fit")
        parts.append(blob[off : off + 2 + size])
        off += 2 + size
    if off != len(blob):
        raise FormatError(
            f"tpm2-blob has {len(blob) - off} bytes after TPM2B_PUBLIC (an imported seed is "
            "not supported)"
        )
    return SealedObject(public=parts[1], private=parts[0])


@dataclass(frozen=True, slots=True)
class Tpm2Token:
    """A ``systemd-tpm2`` token, parsed; ``extra`` keeps every other field."""

    keyslot: int
    blob: bytes
    pcrs: tuple[int, ...]
    bank: HashAlg = HashAlg.SHA256
    primary_alg: str = "ecc"
    policy_hash: bytes = b""
    pin: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    pubkey: bytes = b""
    pubkey_pcrs: tuple[int, ...] = ()

    @classmethod
    def from_token(cls, token: Token) -> Tpm2Token:
        """Parse a token; FormatError for a malformed one, ConfigError for unsupported modes."""
        f = token.fields
        if token.type != TOKEN_TYPE:
            raise FormatError(f"token type is {token.type!r}, expected {TOKEN_TYPE!r}")
        if len(token.keyslots) != 1:
            raise FormatError(f"systemd-tpm2 token names {len(token.keyslots)} keyslots, not 1")
        for name in _UNSUPPORTED:
            if f.get(name):
                raise ConfigError(
                    f"systemd-tpm2 token uses {name!r}, which bastion does not support"
                )
        raw_blob = f.get("tpm2-blob")
        if not isinstance(raw_blob, str):
            raise FormatError("systemd-tpm2 token: tpm2-blob must be one base64 string")
        try:
            blob = base64.b64decode(raw_blob, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FormatError("systemd-tpm2 token: tpm2-blob is not base64") from exc
        pcrs = _pcr_list(f.get("tpm2-pcrs"), "tpm2-pcrs")
        pubkey_pcrs = _pcr_list(f.get("tpm2_pubkey_pcrs", []), "tpm2_pubkey_pcrs")
        pubkey = b""
        raw_pubkey = f.get("tpm2_pubkey")
        if raw_pubkey is not None:
            if not isinstance(raw_pubkey, str) or len(raw_pubkey) > 2 * limits.TPM2_PUBKEY_MAX_SIZE:
                raise FormatError("systemd-tpm2 token: tpm2_pubkey must be a base64 string")
            try:
                pubkey = base64.b64decode(raw_pubkey, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise FormatError("systemd-tpm2 token: tpm2_pubkey is not base64") from exc
        if pubkey_pcrs and not pubkey:
            raise FormatError("systemd-tpm2 token: tpm2_pubkey_pcrs is set but tpm2_pubkey is not")
        if not pcrs and not pubkey_pcrs:
            raise ConfigError("systemd-tpm2 token binds no PCRs; bastion requires at least one")
        bank_name = f.get("tpm2-pcr-bank", "sha256")
        try:
            bank = HashAlg(bank_name)
        except ValueError as exc:
            raise FormatError(f"systemd-tpm2 token: unknown tpm2-pcr-bank {bank_name!r}") from exc
        primary = f.get("tpm2-primary-alg", "ecc")
        if primary != "ecc":
            raise ConfigError(f"systemd-tpm2 token: primary {primary!r} is not supported (ecc)")
        policy_hex = f.get("tpm2-policy-hash", "")
        if not isinstance(policy_hex, str) or not re.fullmatch(
            r"([0-9a-fA-F]{2}){0,64}", policy_hex
        ):
            raise FormatError("systemd-tpm2 token: tpm2-policy-hash must be hex")
        pin = f.get("tpm2-pin", False)
        if not isinstance(pin, bool):
            raise FormatError("systemd-tpm2 token: tpm2-pin must be a boolean")
        return cls(
            keyslot=token.keyslots[0],
            blob=blob,
            pcrs=tuple(sorted(set(pcrs))),
            bank=bank,
            primary_alg=primary,
            policy_hash=bytes.fromhex(policy_hex),
            pin=pin,
            extra={k: v for k, v in f.items() if k not in _KNOWN},
            pubkey=pubkey,
            pubkey_pcrs=tuple(pubkey_pcrs),
        )

    def to_token(self) -> Token:
        """The token as systemd-cryptenroll (v252) writes it."""
        fields: dict[str, Any] = {
            "tpm2-blob": base64.b64encode(self.blob).decode("ascii"),
            "tpm2-pcrs": list(self.pcrs),
            "tpm2-pcr-bank": self.bank.value,
            "tpm2-primary-alg": self.primary_alg,
            "tpm2-policy-hash": self.policy_hash.hex(),
            "tpm2-pin": self.pin,
        }
        if self.pubkey_pcrs:
            fields["tpm2_pubkey_pcrs"] = list(self.pubkey_pcrs)
        if self.pubkey:  # systemd writes it only with tpm2_pubkey_pcrs; keep a foreign one
            fields["tpm2_pubkey"] = base64.b64encode(self.pubkey).decode("ascii")
        fields.update(self.extra)
        return Token(TOKEN_TYPE, (self.keyslot,), fields)

    @property
    def selection(self) -> PcrSelection:
        """The PCRs bound by literal value (``tpm2-pcrs``); ConfigError when there are none."""
        return PcrSelection(self.bank, self.pcrs)

    @property
    def literal_selection(self) -> PcrSelection | None:
        """``tpm2-pcrs`` as a selection, or None for a token bound by signature only."""
        return PcrSelection(self.bank, self.pcrs) if self.pcrs else None

    @property
    def signed_selection(self) -> PcrSelection | None:
        """``tpm2_pubkey_pcrs`` as a selection, or None for a PCR-bound token."""
        return PcrSelection(self.bank, self.pubkey_pcrs) if self.pubkey_pcrs else None

    @property
    def sealed(self) -> SealedObject:
        return split_blob(self.blob)


def _pcr_list(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 24 for p in value
    ):
        raise FormatError(f"systemd-tpm2 token: {what} must be a list of PCR numbers")
    return sorted(set(value))


@dataclass(frozen=True, slots=True)
class TpmEnrollment:
    """What :func:`enroll_tpm` added."""

    keyslot: int
    token: int
    pcrs: tuple[int, ...]
    bank: HashAlg
    policy_hash: bytes
    blob: bytes
    pubkey_pcrs: tuple[int, ...] = ()


def _passphrase(secret: bytes) -> bytes:
    return base64.b64encode(secret)


def enroll_tpm(
    volume: Luks2Volume,
    tpm: Tpm,
    *,
    pcrs: Sequence[int] = DEFAULT_PCRS,
    bank: HashAlg | str = HashAlg.SHA256,
    pcr_values: Mapping[int, bytes] | None = None,
) -> TpmEnrollment:
    """Seal a new keyslot's secret to ``pcrs`` (current values, or ``pcr_values``)."""
    volume.volume_key  # noqa: B018 - raises AuthError when locked, before touching the TPM
    selection = PcrSelection(HashAlg(bank), tuple(pcrs))
    values = dict(pcr_values) if pcr_values is not None else tpm.pcr_read(selection)
    if set(values) != set(selection.indexes):
        raise ConfigError(f"PCR values given for {sorted(values)}, selection is {selection}")
    secret = os.urandom(SECRET_SIZE)
    sealed = tpm.seal(secret, selection, pcr_values=values)
    if pcr_values is None and not hmac.compare_digest(tpm.unseal(sealed, selection), secret):
        raise PolicyError("the TPM returned a different secret right after sealing it")
    policy = pcrmath.sealing_policy(selection, values)
    slot = volume.add_keyslot(_passphrase(secret), kdf=MINIMAL_KDF)
    token = Tpm2Token(slot, sealed.blob, selection.indexes, selection.bank, "ecc", policy)
    token_id = volume.add_token(token.to_token())
    return TpmEnrollment(slot, token_id, selection.indexes, selection.bank, policy, sealed.blob)


def enroll_tpm_signed(
    volume: Luks2Volume,
    tpm: Tpm,
    public_key_pem: bytes,
    *,
    pubkey_pcrs: Sequence[int] = SIGNED_PCRS,
    pcrs: Sequence[int] = SIGNED_LITERAL_PCRS,
    pcr_values: Mapping[int, bytes] | None = None,
    pcr_signature: bytes | None = None,
) -> TpmEnrollment:
    """Seal a new keyslot's secret to PolicyAuthorize by ``public_key_pem`` over
    ``pubkey_pcrs`` (then PolicyPCR over ``pcrs``, current values or ``pcr_values``;
    ``pcrs=()`` binds by signature only, systemd's ``--tpm2-pcrs=``).

    With ``pcr_signature`` (a ``.pcrsig``) the secret is unsealed once before the keyslot
    is written, proving the enrolment works on this TPM now, as systemd-cryptenroll does
    when it finds a signature.
    """
    volume.volume_key  # noqa: B018 - raises AuthError when locked, before touching the TPM
    key = signed_policy.load_public_key(public_key_pem)
    if not pubkey_pcrs:
        raise ConfigError("a signed policy needs at least one PCR (tpm2_pubkey_pcrs), e.g. 11")
    signed = PcrSelection(HashAlg.SHA256, tuple(pubkey_pcrs))
    literal = PcrSelection(HashAlg.SHA256, tuple(pcrs)) if pcrs else None
    values: dict[int, bytes] | None = None
    if literal is not None:
        values = dict(pcr_values) if pcr_values is not None else tpm.pcr_read(literal)
        if set(values) != set(literal.indexes):
            raise ConfigError(f"PCR values given for {sorted(values)}, selection is {literal}")
    elif pcr_values:
        raise ConfigError("pcr_values given but no literal PCRs (pcrs) to bind them to")
    name = tpm.load_external(signed_policy.key_public(key).to_bytes())
    policy = pcrmath.authorized_sealing_policy(name, selection=literal, values=values)
    secret = os.urandom(SECRET_SIZE)
    sealed = tpm.seal_to_policy(secret, policy)
    if pcr_signature is not None:
        approval = signed_policy.approve(tpm, key, signed, pcr_signature)
        if pcr_values is None and not hmac.compare_digest(
            tpm.unseal_authorized(sealed, approval, selection=literal), secret
        ):
            raise PolicyError("the TPM returned a different secret right after sealing it")
    slot = volume.add_keyslot(_passphrase(secret), kdf=MINIMAL_KDF)
    token = Tpm2Token(
        slot,
        sealed.blob,
        tuple(literal.indexes) if literal else (),
        HashAlg.SHA256,
        "ecc",
        policy,
        pubkey=public_key_pem,
        pubkey_pcrs=signed.indexes,
    )
    token_id = volume.add_token(token.to_token())
    return TpmEnrollment(
        slot, token_id, token.pcrs, HashAlg.SHA256, policy, sealed.blob, signed.indexes
    )


def tpm2_tokens(volume: Luks2Volume) -> dict[int, Token]:
    """The ``systemd-tpm2`` tokens of a volume, by token id."""
    return {n: t for n, t in volume.tokens.items() if t.type == TOKEN_TYPE}


def current_policy(tpm: Tpm, token: Tpm2Token) -> bytes:
    """The PolicyPCR digest the token's PCRs give right now."""
    return pcrmath.sealing_policy(token.selection, tpm.pcr_read(token.selection))


def _unseal_signed(tpm: Tpm, token: Tpm2Token, token_id: int, pcr_signature: bytes | None) -> bytes:
    signed = token.signed_selection
    if signed is None:
        raise ConfigError(f"token {token_id} has no signed PCRs (tpm2_pubkey_pcrs)")
    pcr_names = "+".join(map(str, token.pubkey_pcrs))
    if pcr_signature is None:
        raise PolicyError(
            f"token {token_id} is bound to a signed policy for PCR {pcr_names}: give the "
            ".pcrsig (tpm2-pcr-signature.json) of the booted image"
        )
    key = signed_policy.load_public_key(token.pubkey)
    literal = token.literal_selection
    values = tpm.pcr_read(literal) if literal is not None else None
    if token.policy_hash:
        now = pcrmath.authorized_sealing_policy(
            signed_policy.key_name(key), selection=literal, values=values
        )
        if not hmac.compare_digest(now, token.policy_hash):
            raise PolicyError(
                f"token {token_id}: PolicyAuthorize by its tpm2_pubkey"
                f"{' and PCRs ' + '+'.join(map(str, token.pcrs)) if literal else ''} gives "
                f"{now.hex()[:16]}..., the token expects {token.policy_hash.hex()[:16]}... "
                "(the key was replaced or a literal PCR changed)"
            )
    approval = signed_policy.approve(tpm, key, signed, pcr_signature)
    return tpm.unseal_authorized(token.sealed, approval, selection=literal)


def unlock_token(
    volume: Luks2Volume, tpm: Tpm, token_id: int, *, pcr_signature: bytes | None = None
) -> int:
    """Unlock through one ``systemd-tpm2`` token; returns the keyslot. A signed-policy token
    needs ``pcr_signature``, the ``.pcrsig`` JSON of the booted image."""
    if token_id not in volume.tokens:
        raise NotFoundError(f"LUKS2 token {token_id} does not exist")
    token = Tpm2Token.from_token(volume.tokens[token_id])
    if token.pin:
        raise ConfigError(f"token {token_id} needs a TPM PIN, which bastion does not support")
    if token.pubkey_pcrs:
        secret = _unseal_signed(tpm, token, token_id, pcr_signature)
        return volume.unlock_passphrase(_passphrase(secret), keyslot=token.keyslot)
    if token.policy_hash:
        now = current_policy(tpm, token)
        if not hmac.compare_digest(now, token.policy_hash):
            raise PolicyError(
                f"token {token_id}: PCRs {'+'.join(map(str, token.pcrs))} changed: current "
                f"policy {now.hex()[:16]}..., token expects {token.policy_hash.hex()[:16]}..."
            )
    secret = tpm.unseal(token.sealed, token.selection)
    return volume.unlock_passphrase(_passphrase(secret), keyslot=token.keyslot)


def unlock_with_token(
    volume: Luks2Volume,
    tpm: Tpm,
    *,
    token_id: int | None = None,
    pcr_signature: bytes | None = None,
) -> int:
    """Try each ``systemd-tpm2`` token (or one); the first that opens wins.

    Raises the single failure when there is one token, else a PolicyError listing them.
    """
    ids = [token_id] if token_id is not None else sorted(tpm2_tokens(volume))
    if not ids:
        raise NotFoundError("the volume has no systemd-tpm2 token")
    failures: list[BastionError] = []
    for n in ids:
        try:
            return unlock_token(volume, tpm, n, pcr_signature=pcr_signature)
        except BastionError as exc:  # policy, auth, format, TPM errors: try the next token
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    raise PolicyError(
        "no systemd-tpm2 token unlocked the volume: "
        + "; ".join(f"{type(e).__name__}: {e}" for e in failures)
    )


def lock_measurement(volume_uuid: str) -> bytes:
    """The 32-byte value bastion extends into the lock PCR after unlocking a volume."""
    return hashlib.sha256(b"bastion.luks2.lock\0" + volume_uuid.encode()).digest()


def lock(
    tpm: Tpm,
    *,
    volume_uuid: str = "",
    pcr: int = LOCK_PCR,
    banks: Iterable[HashAlg] = (HashAlg.SHA256,),
) -> None:
    """Extend ``pcr`` so secrets sealed to its boot value stay sealed until the next boot."""
    measure = lock_measurement(volume_uuid)
    digests = {bank: hashlib.new(bank.value, measure).digest() for bank in banks}
    tpm.pcr_extend(pcr, digests)


def lock_volume(volume: Luks2Volume, tpm: Tpm, *, pcr: int = LOCK_PCR) -> tuple[HashAlg, ...]:
    """:func:`lock` in every PCR bank the volume's ``systemd-tpm2`` tokens use (and sha256),
    so a token bound to another bank (say sha1) is locked too. Returns the banks."""
    banks = {HashAlg.SHA256}
    for token in tpm2_tokens(volume).values():
        try:
            banks.add(Tpm2Token.from_token(token).bank)
        except BastionError:
            continue  # a token bastion cannot use cannot be unsealed by bastion either
    ordered = tuple(sorted(banks, key=lambda b: b.alg_id))
    lock(tpm, volume_uuid=volume.uuid, pcr=pcr, banks=ordered)
    return ordered


def remove_tpm_enrollment(volume: Luks2Volume, token_id: int) -> None:
    """Remove a ``systemd-tpm2`` token and its keyslot (token first: never a dangling token)."""
    token = Tpm2Token.from_token(volume.tokens[token_id]) if token_id in volume.tokens else None
    if token is None:
        raise NotFoundError(f"LUKS2 token {token_id} does not exist")
    volume.remove_token(token_id)
    if token.keyslot in volume.metadata.keyslots:
        volume.remove_keyslot(token.keyslot)


def reseal(
    volume: Luks2Volume,
    tpm: Tpm,
    token_id: int,
    *,
    pcr_values: Mapping[int, bytes],
    pcrs: Sequence[int] | None = None,
    keep_old: bool = False,
) -> TpmEnrollment:
    """Enroll for new PCR values (e.g. predicted for an update), then drop the old token.

    The volume must be unlocked. With ``keep_old`` both stay until the caller removes the
    old one (A/B updates: remove it once the new slot has booted).
    """
    old = Tpm2Token.from_token(volume.tokens[token_id]) if token_id in volume.tokens else None
    if old is None:
        raise NotFoundError(f"LUKS2 token {token_id} does not exist")
    if old.pubkey_pcrs:
        raise ConfigError(
            f"token {token_id} is bound to a signed policy: updates sign the new PCR 11 "
            "value instead of resealing"
        )
    new = enroll_tpm(
        volume,
        tpm,
        pcrs=tuple(pcrs) if pcrs is not None else old.pcrs,
        bank=old.bank,
        pcr_values=pcr_values,
    )
    if not keep_old:
        remove_tpm_enrollment(volume, token_id)
    return new
