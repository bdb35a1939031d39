"""PCR arithmetic and policy digests, computed exactly as a TPM 2.0 computes them.

Pure functions, no TPM needed: used to predict PCR values from a list of measurements,
to compute the authPolicy a sealed object must carry, and inside the software TPM.

* ``extend(old, digest)``: PCR_new = H(PCR_old || digest).
* ``replay(measurements)``: expected PCR values from ``(index, digest)`` events.
* ``pcr_digest(values)``: H(concatenation of the selected values in index order), the
  pcrDigest of a quote and the PCR part of PolicyPCR.
* Policy digests (TPM 2.0 Part 3): each step is
  ``policy = H(policy || TPM_CC || args)``; chains start from all zeros
  (``empty_policy``). ``policy_pcr``, ``policy_auth_value``, ``policy_secret``,
  ``policy_nv``, ``policy_or``, ``policy_command_code``, ``policy_authorize``.
  ``sealing_policy`` is the one bastion seals to: PolicyPCR, then PolicyAuthValue when a
  PIN/auth value is used; ``authorized_sealing_policy`` the signed-policy form (systemd's
  ``--tpm2-public-key``): PolicyAuthorize(key), then the literal PolicyPCR and
  PolicyAuthValue, if any.
* ``authorize_digest(approved, ref)``: aHash = H(approvedPolicy || policyRef), the digest
  an authority signs and TPM2_VerifySignature checks for PolicyAuthorize.
* ``auth_value_trim``: an authValue loses trailing zero bytes (Part 1, 19.6.5).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence

from bastion.errors import ConfigError
from bastion.formats.tpm2 import PcrSelectionList, u16, u32
from bastion.tpm.base import PCR_COUNT, HashAlg, PcrSelection

TPM_CC_POLICY_NV = 0x00000149
TPM_CC_POLICY_SECRET = 0x00000151
TPM_CC_POLICY_AUTHORIZE = 0x0000016A
TPM_CC_POLICY_AUTH_VALUE = 0x0000016B
TPM_CC_POLICY_COMMAND_CODE = 0x0000016C
TPM_CC_POLICY_OR = 0x00000171
TPM_CC_POLICY_PCR = 0x0000017F

TPM_RH_OWNER = 0x40000001
TPM_RH_NULL = 0x40000007
TPM_RH_ENDORSEMENT = 0x4000000B
TPM_RH_PLATFORM = 0x4000000C

#: PCRs that a TPM Reset sets to all ones instead of zeros (PC Client profile: DRTM PCRs)
ONES_AT_RESET = frozenset(range(17, 23))

#: TPM_EO operations for PolicyNV
EO_EQ, EO_NEQ, EO_SIGNED_GT, EO_UNSIGNED_GT, EO_SIGNED_LT, EO_UNSIGNED_LT = range(6)
EO_SIGNED_GE, EO_UNSIGNED_GE, EO_SIGNED_LE, EO_UNSIGNED_LE, EO_BITSET, EO_BITCLEAR = range(6, 12)


_HASH_FUNCS = {
    HashAlg.SHA1: hashlib.sha1,
    HashAlg.SHA256: hashlib.sha256,
    HashAlg.SHA384: hashlib.sha384,
    HashAlg.SHA512: hashlib.sha512,
}


def _h(bank: HashAlg, data: bytes) -> bytes:
    return _HASH_FUNCS[bank](data).digest()


def reset_value(index: int, bank: HashAlg = HashAlg.SHA256) -> bytes:
    """The value of PCR ``index`` right after a TPM Reset."""
    fill = 0xFF if index in ONES_AT_RESET else 0
    return bytes([fill]) * bank.digest_size


def extend(old: bytes, digest: bytes, bank: HashAlg = HashAlg.SHA256) -> bytes:
    """PCR_new = H_bank(PCR_old || digest)."""
    if len(old) != bank.digest_size or len(digest) != bank.digest_size:
        raise ConfigError(
            f"{bank} extend needs {bank.digest_size}-byte values, got {len(old)} and {len(digest)}"
        )
    return _h(bank, old + digest)


def replay(
    measurements: Iterable[tuple[int, bytes]],
    bank: HashAlg = HashAlg.SHA256,
    *,
    initial: Mapping[int, bytes] | None = None,
) -> dict[int, bytes]:
    """Expected PCR values after extending each ``(index, digest)`` in order, starting
    from ``initial`` or the reset values; returns only the PCRs that were touched or given."""
    values: dict[int, bytes] = dict(initial or {})
    for index, digest in measurements:
        if not 0 <= index < PCR_COUNT:
            raise ConfigError(f"PCR index {index} out of range 0..{PCR_COUNT - 1}")
        values[index] = extend(values.get(index, reset_value(index, bank)), digest, bank)
    return values


def pcr_digest(
    selection: PcrSelection, values: Mapping[int, bytes], hash_alg: HashAlg | None = None
) -> bytes:
    """H(values of the selected PCRs concatenated in index order); ``hash_alg`` defaults
    to the bank (the quote uses the signing scheme's hash instead)."""
    indexes = selection.indexes
    try:
        parts = [values[i] for i in indexes]
    except KeyError:
        missing = [i for i in indexes if i not in values]
        raise ConfigError(f"no value given for PCR(s) {missing} of {selection}") from None
    size = selection.bank.digest_size
    for i, value in zip(indexes, parts, strict=True):
        if len(value) != size:
            raise ConfigError(f"PCR {i} value is {len(value)} bytes, {selection.bank} needs {size}")
    return _h(hash_alg or selection.bank, b"".join(parts))


@functools.lru_cache(maxsize=64)
def selection_list(selection: PcrSelection) -> PcrSelectionList:
    """The TPML_PCR_SELECTION of one bank as a TPM marshals it (3-byte bitmap); memoized,
    a fleet has one or two selections and every quote check compares with it."""
    return PcrSelectionList.single(selection.bank.alg_id, selection.indexes)


def selection_bytes(selection: PcrSelection) -> bytes:
    """The marshalled :func:`selection_list`."""
    return selection_list(selection).to_bytes()


def empty_policy(policy_alg: HashAlg = HashAlg.SHA256) -> bytes:
    """The starting policy digest: all zeros."""
    return bytes(policy_alg.digest_size)


def _check(policy: bytes, policy_alg: HashAlg) -> None:
    if len(policy) != policy_alg.digest_size:
        raise ConfigError(
            f"policy digest is {len(policy)} bytes, {policy_alg} needs {policy_alg.digest_size}"
        )


def policy_pcr(
    selection: PcrSelection,
    values: Mapping[int, bytes],
    policy: bytes | None = None,
    policy_alg: HashAlg = HashAlg.SHA256,
) -> bytes:
    """TPM2_PolicyPCR: H(policy || CC || TPML_PCR_SELECTION || H(selected values))."""
    policy = empty_policy(policy_alg) if policy is None else policy
    _check(policy, policy_alg)
    digest = pcr_digest(selection, values, policy_alg)
    return _h(policy_alg, policy + u32(TPM_CC_POLICY_PCR) + selection_bytes(selection) + digest)


def policy_auth_value(policy: bytes | None = None, policy_alg: HashAlg = HashAlg.SHA256) -> bytes:
    """TPM2_PolicyAuthValue: H(policy || CC)."""
    policy = empty_policy(policy_alg) if policy is None else policy
    _check(policy, policy_alg)
    return _h(policy_alg, policy + u32(TPM_CC_POLICY_AUTH_VALUE))


def policy_command_code(
    command_code: int, policy: bytes | None = None, policy_alg: HashAlg = HashAlg.SHA256
) -> bytes:
    """TPM2_PolicyCommandCode: H(policy || CC || commandCode)."""
    policy = empty_policy(policy_alg) if policy is None else policy
    _check(policy, policy_alg)
    return _h(policy_alg, policy + u32(TPM_CC_POLICY_COMMAND_CODE) + u32(command_code))


def _policy_update(
    policy: bytes, command_code: int, name: bytes, ref: bytes, alg: HashAlg
) -> bytes:
    # PolicyUpdate (Part 3, 23.2.3): two hashing rounds
    return _h(alg, _h(alg, policy + u32(command_code) + name) + ref)


def policy_secret(
    auth_name: bytes,
    policy_ref: bytes = b"",
    policy: bytes | None = None,
    policy_alg: HashAlg = HashAlg.SHA256,
) -> bytes:
    """TPM2_PolicySecret; ``auth_name`` is the Name of the authorizing entity (for a
    hierarchy, its 4-byte handle, e.g. ``u32(TPM_RH_ENDORSEMENT)``)."""
    policy = empty_policy(policy_alg) if policy is None else policy
    _check(policy, policy_alg)
    return _policy_update(policy, TPM_CC_POLICY_SECRET, auth_name, policy_ref, policy_alg)


def policy_nv(
    nv_name: bytes,
    operand_b: bytes,
    *,
    offset: int = 0,
    operation: int = EO_EQ,
    policy: bytes | None = None,
    policy_alg: HashAlg = HashAlg.SHA256,
) -> bytes:
    """TPM2_PolicyNV: H(policy || CC || H(operandB || offset || operation) || nvName)."""
    policy = empty_policy(policy_alg) if policy is None else policy
    _check(policy, policy_alg)
    args = _h(policy_alg, operand_b + u16(offset) + u16(operation))
    return _h(policy_alg, policy + u32(TPM_CC_POLICY_NV) + args + nv_name)


def policy_or(branches: Sequence[bytes], policy_alg: HashAlg = HashAlg.SHA256) -> bytes:
    """TPM2_PolicyOR over 2..8 branch digests: H(0...0 || CC || branch digests)."""
    if not 2 <= len(branches) <= 8:
        raise ConfigError(f"PolicyOR takes 2 to 8 branches, got {len(branches)}")
    for b in branches:
        _check(b, policy_alg)
    return _h(policy_alg, empty_policy(policy_alg) + u32(TPM_CC_POLICY_OR) + b"".join(branches))


def policy_authorize(
    key_name: bytes, policy_ref: bytes = b"", policy_alg: HashAlg = HashAlg.SHA256
) -> bytes:
    """TPM2_PolicyAuthorize: the digest is first reset to zeros (whatever came before is
    replaced by the approved policy), then H(H(0...0 || CC || keyName) || policyRef)."""
    return _policy_update(
        empty_policy(policy_alg), TPM_CC_POLICY_AUTHORIZE, key_name, policy_ref, policy_alg
    )


def authorize_digest(
    approved_policy: bytes, policy_ref: bytes = b"", hash_alg: HashAlg = HashAlg.SHA256
) -> bytes:
    """aHash = H(approvedPolicy || policyRef): what the authority signs for PolicyAuthorize
    (systemd-measure: PKCS#1 v1.5 / SHA-256 over the PolicyPCR digest, empty policyRef)."""
    return _h(hash_alg, approved_policy + policy_ref)


def authorized_sealing_policy(
    key_name: bytes,
    *,
    selection: PcrSelection | None = None,
    values: Mapping[int, bytes] | None = None,
    with_auth_value: bool = False,
    policy_ref: bytes = b"",
) -> bytes:
    """The authPolicy of an object sealed to a signed PCR policy, in systemd 252's order:
    PolicyAuthorize(key_name, policy_ref), then PolicyPCR over ``selection`` with
    ``values`` (PCRs bound by literal value, optional), then PolicyAuthValue."""
    policy = policy_authorize(key_name, policy_ref)
    if selection is not None:
        policy = policy_pcr(selection, values or {}, policy)
    return policy_auth_value(policy) if with_auth_value else policy


def sealing_policy(
    selection: PcrSelection, values: Mapping[int, bytes], *, with_auth_value: bool = False
) -> bytes:
    """bastion's sealing policy (sha256): PolicyPCR, then PolicyAuthValue if an auth
    value protects the object. Both backends seal to exactly this digest."""
    policy = policy_pcr(selection, values)
    return policy_auth_value(policy) if with_auth_value else policy


def auth_value_trim(auth: bytes) -> bytes:
    """An authValue as the TPM stores and compares it: trailing zero bytes removed."""
    return auth.rstrip(b"\0")


#: PolicySecret(TPM_RH_ENDORSEMENT): the authPolicy of the TCG default EK templates
EK_POLICY = policy_secret(u32(TPM_RH_ENDORSEMENT))
