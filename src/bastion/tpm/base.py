"""The ``Tpm`` protocol: the small TPM 2.0 surface bastion uses, and its value types.

Two backends implement it and pass one contract suite: ``software`` (pure Python,
the embedded default) and ``tss`` (tpm2-pytss: swtpm in tests, /dev/tpmrm0 on
devices). Everything that crosses this interface is either a plain value or the
TPM's own marshalled bytes (TPM2B_PUBLIC, TPM2B_PRIVATE, TPMS_ATTEST,
TPMT_SIGNATURE, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET), so that what one backend
returns is exactly what a real TPM and tpm2-tools produce and accept.

Key model (both backends):

* The storage primary ("SRK") is the transient ECC P-256 primary in the owner
  hierarchy from systemd's legacy template (restricted|decrypt|fixedTPM|fixedParent|
  sensitiveDataOrigin|userWithAuth, AES-128-CFB, empty unique). It is re-created on
  demand; the same TPM always yields the same key. Sealed objects, AKs and signing
  keys are its children and are carried outside the TPM as (public, private) blobs,
  which are useless on any other TPM.
* The endorsement key is the TCG default RSA-2048 EK (template L-1, policy
  PolicySecret(TPM_RH_ENDORSEMENT)) in the endorsement hierarchy.
* An attestation key is a restricted ECDSA P-256 / SHA-256 signing key.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bastion.errors import ConfigError


class HashAlg(enum.StrEnum):
    """PCR banks / hash algorithms bastion knows, with their TPM_ALG_ID."""

    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def alg_id(self) -> int:
        """The TPM_ALG_ID of this hash."""
        return _ALG_IDS[self]

    @property
    def digest_size(self) -> int:
        """Digest length in bytes."""
        return _DIGEST_SIZES[self]


# module tables, not dicts built per call: both are read several times per verdict
_ALG_IDS = {"sha1": 0x0004, "sha256": 0x000B, "sha384": 0x000C, "sha512": 0x000D}
_DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}


PCR_COUNT = 24
_SEL_RE = re.compile(r"^(sha1|sha256|sha384|sha512):(\d{1,2}(?:,\d{1,2})*)$")


@dataclass(frozen=True, slots=True)
class PcrSelection:
    """A set of PCR indexes in one bank, e.g. ``PcrSelection.parse("sha256:0,1,7")``."""

    bank: HashAlg
    indexes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.indexes:
            raise ConfigError("a PCR selection needs at least one PCR")
        for i in self.indexes:
            if not 0 <= i < PCR_COUNT:
                raise ConfigError(f"PCR index {i} out of range 0..{PCR_COUNT - 1}")
        if list(self.indexes) != sorted(set(self.indexes)):
            object.__setattr__(self, "indexes", tuple(sorted(set(self.indexes))))

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        """Parse the tpm2-tools spelling ``bank:i,j,k``."""
        match = _SEL_RE.match(text.strip())
        if not match:
            raise ConfigError(f"bad PCR selection {text!r}: expected e.g. sha256:0,1,7")
        return cls(HashAlg(match.group(1)), tuple(int(x) for x in match.group(2).split(",")))

    def __str__(self) -> str:
        return f"{self.bank.value}:{','.join(str(i) for i in self.indexes)}"


@dataclass(frozen=True, slots=True)
class TpmKey:
    """A key object kept outside the TPM: its TPM2B_PUBLIC and TPM2B_PRIVATE bytes.

    ``public`` and ``private`` are marshalled exactly as the TPM returns them from
    TPM2_Create (size-prefixed). ``name`` is the object Name (nameAlg || H(TPMT_PUBLIC)).
    """

    public: bytes
    private: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class SealedObject:
    """A secret sealed under the storage primary: TPM2B_PRIVATE and TPM2B_PUBLIC bytes.

    ``blob`` is ``private || public``: the ``tpm2-blob`` layout of systemd's LUKS2 token.
    """

    public: bytes
    private: bytes

    @property
    def blob(self) -> bytes:
        """systemd's ``tpm2-blob`` serialisation."""
        return self.private + self.public


@dataclass(frozen=True, slots=True)
class Attestation:
    """A signed TPM statement: TPMS_ATTEST bytes (without the TPM2B size) and TPMT_SIGNATURE."""

    attest: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class PolicyApproval:
    """What TPM2_PolicyAuthorize needs to replace a policy by its authority's approval.

    ``selection`` is the PCR selection of the approved PolicyPCR (systemd: PCR 11) and
    ``approved_policy`` its digest for the PCR values the authority signed;
    ``key_name`` is the Name of the authority's key as the TPM computed it in
    ``load_external``; ``ticket`` the TPMT_TK_VERIFIED that ``verify_signature`` returned
    for ``authorize_digest(approved_policy, policy_ref)``. The TPM recomputes the
    PolicyPCR digest from its *current* PCRs, so a stale approval fails there.
    """

    key_name: bytes
    selection: PcrSelection
    approved_policy: bytes
    ticket: bytes
    policy_ref: bytes = b""


@runtime_checkable
class Tpm(Protocol):
    """The TPM operations bastion needs. Every method raises TpmError on TPM failure."""

    # --- PCRs ----------------------------------------------------------------------------
    def pcr_read(self, selection: PcrSelection) -> dict[int, bytes]:
        """Current values of the selected PCRs."""
        ...

    def pcr_extend(self, index: int, digests: Mapping[HashAlg, bytes]) -> None:
        """Extend PCR ``index`` in each given bank with the given digest."""
        ...

    # --- sealing -------------------------------------------------------------------------
    def seal(
        self,
        secret: bytes,
        selection: PcrSelection,
        *,
        pcr_values: Mapping[int, bytes] | None = None,
        auth_value: bytes | None = None,
    ) -> SealedObject:
        """Seal ``secret`` to PolicyPCR over ``selection`` (current values, or ``pcr_values``
        when given, for sealing to a future state), plus PolicyAuthValue when ``auth_value``
        is given."""
        ...

    def unseal(
        self, sealed: SealedObject, selection: PcrSelection, *, auth_value: bytes | None = None
    ) -> bytes:
        """Release a sealed secret; PolicyError if the PCRs (or auth value) do not match."""
        ...

    # --- signed policies (TPM2_PolicyAuthorize) -------------------------------------------
    def load_external(self, public: bytes) -> bytes:
        """TPM2_LoadExternal of a public key (TPM2B_PUBLIC, no sensitive part) in the owner
        hierarchy; returns its Name as the TPM computed it. The object is flushed again."""
        ...

    def verify_signature(self, public: bytes, digest: bytes, signature: bytes) -> bytes:
        """TPM2_LoadExternal (owner hierarchy) + TPM2_VerifySignature of a TPMT_SIGNATURE
        over ``digest``; returns the TPMT_TK_VERIFIED ticket. SignatureError when the
        signature does not verify."""
        ...

    def seal_to_policy(
        self, secret: bytes, policy: bytes, *, auth_value: bytes | None = None
    ) -> SealedObject:
        """Seal ``secret`` under the storage primary with ``policy`` (a SHA-256 policy
        digest, e.g. :func:`bastion.tpm.pcr.authorized_sealing_policy`) as authPolicy."""
        ...

    def unseal_authorized(
        self,
        sealed: SealedObject,
        approval: PolicyApproval,
        *,
        selection: PcrSelection | None = None,
        auth_value: bytes | None = None,
    ) -> bytes:
        """Unseal in a policy session: PolicyPCR(approval.selection) with the current PCRs,
        PolicyAuthorize(approval), then PolicyPCR(``selection``) and PolicyAuthValue when
        given. PolicyError when the PCRs differ from the approved policy, the ticket is not
        valid for it, or the resulting digest is not the object's authPolicy."""
        ...

    # --- NV: counters and fuse bits ------------------------------------------------------
    def nv_define_counter(self, index: int) -> None:
        """Define an 8-byte TPM_NT_COUNTER index (ConflictError if defined)."""
        ...

    def nv_increment(self, index: int) -> int:
        """Increment a counter and return its new value."""
        ...

    def nv_read_counter(self, index: int) -> int:
        """Read a counter's value (NotFoundError if undefined)."""
        ...

    def nv_define_bits(self, index: int) -> None:
        """Define a 64-bit TPM_NT_BITS index (ConflictError if defined)."""
        ...

    def nv_set_bits(self, index: int, bits: int) -> None:
        """OR ``bits`` into a bit field; bits can never be cleared."""
        ...

    def nv_read_bits(self, index: int) -> int:
        """Read a bit field."""
        ...

    def nv_undefine(self, index: int) -> None:
        """Delete an NV index (counters keep their high-water mark on the TPM)."""
        ...

    # --- keys, quotes, credentials -------------------------------------------------------
    def ek_public(self) -> bytes:
        """TPM2B_PUBLIC of the RSA-2048 endorsement key (TCG default template)."""
        ...

    def ek_certificate(self) -> bytes | None:
        """The DER EK certificate its maker stored in NV (0x01c00002, TCG EK Credential
        Profile), or None when the TPM has none (the software TPM never has one)."""
        ...

    def create_ak(self) -> TpmKey:
        """Create a restricted ECDSA P-256 attestation key under the storage primary."""
        ...

    def create_signing_key(self, algorithm: str = "ecc-p256") -> TpmKey:
        """Create a non-restricted, non-exportable signing key ("ecc-p256" or "rsa2048")."""
        ...

    def sign(self, key: TpmKey, digest: bytes) -> bytes:
        """Sign a SHA-256 ``digest`` with ``key``; returns TPMT_SIGNATURE bytes."""
        ...

    def quote(self, ak: TpmKey, nonce: bytes, selection: PcrSelection) -> Attestation:
        """TPM2_Quote over ``selection`` with ``nonce`` as qualifying data."""
        ...

    def certify(self, ak: TpmKey, key: TpmKey, nonce: bytes) -> Attestation:
        """TPM2_Certify: the AK attests that ``key`` lives in this TPM."""
        ...

    def activate_credential(self, ak: TpmKey, credential_blob: bytes, secret: bytes) -> bytes:
        """TPM2_ActivateCredential with this TPM's EK: TPM2B_ID_OBJECT and
        TPM2B_ENCRYPTED_SECRET in, the credential out."""
        ...

    def get_random(self, size: int) -> bytes:
        """``size`` random bytes from the TPM."""
        ...

    def close(self) -> None:
        """Release the connection / flush state."""
        ...
