"""Signed PCR policies for ``systemd-tpm2`` tokens: the authority's key and the ``.pcrsig``.

A token enrolled with ``systemd-cryptenroll --tpm2-public-key=pub.pem
--tpm2-public-key-pcrs=11`` carries the authority's public key (``tpm2_pubkey``: base64
of the PEM file as given) and seals its secret to TPM2_PolicyAuthorize by that key, so
any PCR 11 value the key signs unlocks it (updates never reseal) and no other does.

To unlock, the device reads the current values of the signed PCRs (``tpm2_pubkey_pcrs``),
computes their PolicyPCR digest, and picks the ``.pcrsig`` entry (systemd-measure's
``tpm2-pcr-signature.json``) that is for exactly those PCRs, carries the key's
fingerprint and signs that digest, as systemd 252's ``find_signature`` does. The TPM then
checks the signature (TPM2_VerifySignature gives a ticket) and the session
(PolicyPCR, PolicyAuthorize): :func:`approve` returns the resulting
:class:`~bastion.tpm.base.PolicyApproval`. No matching entry raises
:class:`~bastion.errors.SignatureError` (no entry by this key) or
:class:`~bastion.errors.PolicyError` naming the PCR and its current value.

Only what systemd 252 supports: RSA keys as SPKI PEM (``BEGIN PUBLIC KEY``), the
sha256 bank, an empty policyRef.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion import limits
from bastion.errors import ConfigError, FormatError, LimitError, PolicyError, SignatureError
from bastion.formats.tpm2 import Public
from bastion.tpm import external
from bastion.tpm.base import HashAlg, PcrSelection, PolicyApproval, Tpm
from bastion.tpm.pcr import authorize_digest, policy_pcr
from bastion.trust.pcr11 import parse_pcrsig, public_key_fingerprint

PEM_SPKI_HEADER = b"-----BEGIN PUBLIC KEY-----"


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """The authority's RSA key from SPKI PEM bytes (what systemd's PEM_read_PUBKEY reads)."""
    if len(pem) > limits.TPM2_PUBKEY_MAX_SIZE:
        raise LimitError(f"public key is {len(pem)} bytes, limit {limits.TPM2_PUBKEY_MAX_SIZE}")
    if not pem.lstrip().startswith(PEM_SPKI_HEADER):
        raise FormatError("the PCR public key must be a PEM 'BEGIN PUBLIC KEY' (SPKI) block")
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise FormatError(f"the PCR public key is not a valid PEM public key: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(
            f"the PCR public key is {type(key).__name__}: systemd 252 signed policies are RSA"
        )
    return key


def key_public(key: rsa.RSAPublicKey) -> Public:
    """The TPMT_PUBLIC systemd 252 loads for ``key`` (its Name is in the policy)."""
    return external.rsa_public(key, explicit_exponent=True)


def key_name(key: rsa.RSAPublicKey) -> bytes:
    """The Name PolicyAuthorize commits to, computed offline."""
    return key_public(key).name


def find_signature(
    pcrsig: bytes,
    key: rsa.RSAPublicKey,
    selection: PcrSelection,
    values: dict[int, bytes],
) -> tuple[bytes, bytes]:
    """The approved PolicyPCR digest for ``values`` and the signature of it in ``pcrsig``.

    Raises SignatureError when no entry is by ``key``, PolicyError when none signs the
    current values (the message names the PCRs and their values)."""
    if selection.bank is not HashAlg.SHA256:
        raise ConfigError(f"signed PCR policies use the sha256 bank, the token uses {selection}")
    approved = policy_pcr(selection, values)
    fingerprint = public_key_fingerprint(key)
    entries = parse_pcrsig(pcrsig)
    mine = [e for e in entries if str(e["pkfp"]).lower() == fingerprint]
    if not mine:
        others = sorted({str(e["pkfp"]) for e in entries})
        raise SignatureError(
            f".pcrsig has no signature by the token's key {fingerprint[:16]}...: it is signed "
            f"by {', '.join(o[:16] + '...' for o in others)}"
        )
    for entry in mine:
        if entry["pcrs"] == list(selection.indexes) and str(entry["pol"]).lower() == approved.hex():
            try:
                return approved, base64.b64decode(str(entry["sig"]), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise FormatError(f".pcrsig signature for {approved.hex()} is not base64") from exc
    now = ", ".join(f"PCR {i} = {values[i].hex()}" for i in selection.indexes)
    signed = ", ".join(str(e["pol"])[:16] + "..." for e in mine)
    raise PolicyError(
        f"no .pcrsig entry signs the current PCR state: {now} ({selection.bank} bank) gives "
        f"policy {approved.hex()}, but the key's signed policies are {signed} (signed for "
        "another image or boot phase)"
    )


def approve(
    tpm: Tpm, key: rsa.RSAPublicKey, selection: PcrSelection, pcrsig: bytes
) -> PolicyApproval:
    """Let the TPM check the ``.pcrsig`` entry for the current PCRs: a PolicyApproval."""
    values = tpm.pcr_read(selection)
    approved, raw = find_signature(pcrsig, key, selection, values)
    public = key_public(key).to_bytes()
    ticket = tpm.verify_signature(public, authorize_digest(approved), external.signature(key, raw))
    return PolicyApproval(tpm.load_external(public), selection, approved, ticket)
