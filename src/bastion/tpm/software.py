"""``SoftwareTpm``: a pure-Python TPM 2.0 implementing :class:`bastion.tpm.base.Tpm`.

The embedded default backend. What leaves it is what a real TPM would produce, computed
with the TPM 2.0 Part 1 algorithms: sealed-object public areas and Names, PolicyPCR /
PolicyAuthValue digests, TPMS_ATTEST quotes and certifications signed by an ECDSA
P-256 AK, the TCG L-1 RSA-2048 EK that ``tpm2_makecredential`` targets, and
ActivateCredential of the standard credential blobs. See ADR 0003 for the model.

State lives in one file (:mod:`bastion.tpm._software_state`) that every operation reads
and every mutation rewrites atomically under a lock, so separate processes share PCRs,
NV indexes and counters. ``power_cycle()`` is a TPM Reset: PCRs back to their reset
values, NV kept. Objects carried outside (``TpmKey``, ``SealedObject``) have a private
part sealed with keys derived from this state's storage seed: useless elsewhere,
and any change to them raises ``TpmError(rc=TPM_RC_INTEGRITY)``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from bastion import limits
from bastion.errors import (
    ConfigError,
    ConflictError,
    FormatError,
    NotFoundError,
    PolicyError,
    SignatureError,
    TpmError,
    VerificationError,
)
from bastion.formats.tpm2 import (
    HASH_SIZES,
    ST_ATTEST_CERTIFY,
    ST_ATTEST_QUOTE,
    ST_VERIFIED,
    Alg,
    Attest,
    CertifyInfo,
    ClockInfo,
    Curve,
    EccParms,
    EccPoint,
    EncryptedSecret,
    KeyedHashParms,
    ObjectAttr,
    PcrSelectionList,
    Private,
    Public,
    QuoteInfo,
    Reader,
    RsaParms,
    Scheme,
    Sensitive,
    Signature,
    SymDef,
    VerifiedTicket,
    tpm2b,
    u16,
    u32,
)
from bastion.io.clock import Clock, SystemClock
from bastion.tpm._software_state import BANKS, NvIndex, State, StateFile
from bastion.tpm.base import (
    PCR_COUNT,
    Attestation,
    HashAlg,
    PcrSelection,
    PolicyApproval,
    SealedObject,
    TpmKey,
)
from bastion.tpm.pcr import (
    EK_POLICY,
    TPM_RH_OWNER,
    auth_value_trim,
    authorize_digest,
    authorized_sealing_policy,
    extend,
    pcr_digest,
    policy_pcr,
    sealing_policy,
)
from bastion.tpm.quote import aes_cfb, credential_to_secret, kdfa, oaep

# TPM_RC values the software TPM reports (Part 2, table 16)
RC_VALUE = 0x084
RC_SIZE = 0x095
RC_ATTRIBUTES = 0x082
RC_TYPE = 0x08A
RC_INTEGRITY = 0x09F
RC_TICKET = 0x0A1
RC_POLICY_FAIL = 0x99D
RC_AUTH_FAIL = 0x98E
RC_NV_UNINITIALIZED = 0x14A
RC_NV_DEFINED = 0x14C
RC_HANDLE = 0x08B
RC_HASH = 0x083
RC_SCHEME = 0x092
RC_SIGNATURE = 0x09B
RC_KEY = 0x09C
RC_CURVE = 0x0A6
RC_ECC_POINT = 0x0A7

#: TPMS_ATTEST.firmwareVersion before obfuscation: "bastion software TPM 1.0"
FIRMWARE_VERSION = 0x6261_7374_0001_0000

# the storage primary: systemd's legacy ECC template (restricted|decrypt|fixedTPM|
# fixedParent|sensitiveDataOrigin|userWithAuth, AES-128-CFB, NIST P-256)
SRK_ATTRIBUTES = 0x00030072
EK_ATTRIBUTES = 0x000300B2
AK_ATTRIBUTES = 0x00050072  # restricted|sign|fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth
SIGNING_KEY_ATTRIBUTES = 0x00040072  # sign|fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth
SEALED_ATTRIBUTES = 0x00000012  # fixedTPM|fixedParent
AES128_CFB = SymDef(Alg.AES, 128, Alg.CFB)
NV_INDEX_FIRST, NV_INDEX_LAST = 0x01000000, 0x01FFFFFF
_U64 = 2**64
_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    Alg.SHA1: hashes.SHA1,
    Alg.SHA256: hashes.SHA256,
    Alg.SHA384: hashes.SHA384,
    Alg.SHA512: hashes.SHA512,
}
T = TypeVar("T")


def _ecc_public(attributes: int, scheme: Scheme, key: ec.EllipticCurvePublicKey) -> Public:
    nums = key.public_numbers()
    point = EccPoint(nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big"))
    parms = EccParms(
        AES128_CFB if attributes & ObjectAttr.DECRYPT else SymDef(), scheme, Curve.NIST_P256
    )
    return Public(Alg.ECC, Alg.SHA256, attributes, b"", parms, point)


def ek_template_public(key: rsa.RSAPublicKey) -> Public:
    """The TCG default EK (template L-1) with ``key`` as its unique field."""
    n = key.public_numbers().n.to_bytes(256, "big")
    parms = RsaParms(AES128_CFB, Scheme(), 2048, 0)
    return Public(Alg.RSA, Alg.SHA256, EK_ATTRIBUTES, EK_POLICY, parms, n)


def _qualified_name(parent_qn: bytes, name: bytes) -> bytes:
    return u16(Alg.SHA256) + hashlib.sha256(parent_qn + name).digest()


def _sig_from_der(der: bytes) -> bytes:
    r, s = utils.decode_dss_signature(der)
    return Signature(
        Alg.ECDSA, Alg.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big")
    ).to_bytes()


class SoftwareTpm:
    """A TPM 2.0 in a state file; see the module docstring."""

    def __init__(self, state_path: Path, *, clock: Clock | None = None) -> None:
        self._file = StateFile(Path(state_path))
        self._clock = clock or SystemClock()
        self._srk_cache: tuple[bytes, bytes] | None = None  # (storage seed, SRK QN)
        self._ek_cache: tuple[str, rsa.RSAPrivateKey] | None = None  # (EK PEM, loaded key)
        with self._file.locked():
            if not self._file.exists():
                self._file.save(State.fresh(self._now()))
        self._file.load()  # fail now if the file is corrupt

    @property
    def state_path(self) -> Path:
        return self._file.path

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _read(self) -> State:
        return self._file.load()

    def _mutate(self, change: Callable[[State], T]) -> T:
        """Run ``change(state)`` under the lock and save the state; returns its result."""
        with self._file.locked():
            st = self._file.load()
            result = change(st)
            self._file.save(st)
        return result

    def __enter__(self) -> SoftwareTpm:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every operation already saved its state."""

    def power_cycle(self) -> None:
        """TPM Reset: PCRs to their reset values, resetCount + 1; NV and Clock kept."""

        def change(st: State) -> None:
            now = self._now()
            st.clock_ms, st.clock_at = st.clock(now), now
            st.reset_pcrs()
            st.reset_count += 1
            st.restart_count = 0

        self._mutate(change)

    # --- PCRs --------------------------------------------------------------------------------

    @staticmethod
    def _bank(st: State, bank: HashAlg) -> list[bytes]:
        if bank not in st.pcrs:
            raise TpmError(
                f"PCR bank {bank} is not allocated (software TPM has "
                f"{', '.join(b.value for b in BANKS)})",
                rc=RC_VALUE,
            )
        return st.pcrs[bank]

    def pcr_read(self, selection: PcrSelection) -> dict[int, bytes]:
        bank = self._bank(self._read(), selection.bank)
        return {i: bank[i] for i in selection.indexes}

    def pcr_extend(self, index: int, digests: Mapping[HashAlg, bytes]) -> None:
        if not 0 <= index < PCR_COUNT:
            raise ConfigError(f"PCR index {index} out of range 0..{PCR_COUNT - 1}")
        if not digests:
            raise ConfigError("pcr_extend needs at least one digest")
        for bank, digest in digests.items():
            if len(digest) != bank.digest_size:
                raise FormatError(
                    f"{bank} digest for PCR {index} is {len(digest)} bytes, "
                    f"expected {bank.digest_size}"
                )

        def change(st: State) -> None:
            for bank, digest in digests.items():
                values = self._bank(st, bank)
                values[index] = extend(values[index], digest, bank)

        self._mutate(change)

    # --- object protection -------------------------------------------------------------------

    def _srk_qn(self, st: State) -> bytes:
        if self._srk_cache is None or self._srk_cache[0] != st.storage_seed:
            material = kdfa(Alg.SHA256, st.storage_seed, b"bastion SRK", b"", b"", 384)
            order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
            scalar = int.from_bytes(material, "big") % (order - 1) + 1
            key = ec.derive_private_key(scalar, ec.SECP256R1())
            srk = _ecc_public(SRK_ATTRIBUTES, Scheme(), key.public_key())
            self._srk_cache = (st.storage_seed, _qualified_name(u32(TPM_RH_OWNER), srk.name))
        return self._srk_cache[1]

    @staticmethod
    def _wrap(st: State, name: bytes, sensitive: Sensitive) -> bytes:
        sym = kdfa(Alg.SHA256, st.storage_seed, b"STORAGE", name, b"", 128)
        mac_key = kdfa(Alg.SHA256, st.storage_seed, b"INTEGRITY", b"", b"", 256)
        iv = os.urandom(16)
        body = tpm2b(iv) + aes_cfb(sym, sensitive.to_bytes(), encrypt=True, iv=iv)
        mac = hmac.digest(mac_key, body + name, "sha256")
        return Private(tpm2b(mac) + body).to_bytes()

    @staticmethod
    def _unwrap(st: State, name: bytes, private: bytes) -> Sensitive:
        try:
            r = Reader(Private.parse(private).buffer, "TPM2B_PRIVATE")
            mac = r.tpm2b(32, "integrity")
            body = r.data[r.pos :]
            iv = r.tpm2b(16, "iv")
            enc = r.take(len(r.data) - r.pos)
        except FormatError as exc:
            raise TpmError(f"private part is malformed: {exc}", rc=RC_SIZE) from exc
        mac_key = kdfa(Alg.SHA256, st.storage_seed, b"INTEGRITY", b"", b"", 256)
        if len(iv) != 16 or not hmac.compare_digest(
            mac, hmac.digest(mac_key, body + name, "sha256")
        ):
            raise TpmError(
                "object integrity check failed: the private part was not made by this TPM "
                "for this public area",
                rc=RC_INTEGRITY,
            )
        sym = kdfa(Alg.SHA256, st.storage_seed, b"STORAGE", name, b"", 128)
        try:
            return Sensitive.parse(aes_cfb(sym, enc, encrypt=False, iv=iv))
        except FormatError as exc:  # pragma: no cover - the MAC already vouched for it
            raise TpmError(f"sensitive area is malformed: {exc}", rc=RC_INTEGRITY) from exc

    def _load(
        self, st: State, public: bytes, private: bytes, name: bytes | None = None
    ) -> tuple[Public, Sensitive]:
        try:
            pub = Public.parse(public)
        except FormatError as exc:
            raise TpmError(f"public area is malformed: {exc}", rc=RC_SIZE) from exc
        if name is not None and not hmac.compare_digest(name, pub.name):
            raise TpmError("key name does not match its public area", rc=RC_INTEGRITY)
        sens = self._unwrap(st, pub.name, private)
        if sens.sensitive_type != pub.type:
            raise TpmError("sensitive and public types differ", rc=RC_TYPE)
        return pub, sens

    # --- sealing -----------------------------------------------------------------------------

    def _policy_values(
        self, st: State, selection: PcrSelection, given: Mapping[int, bytes] | None
    ) -> dict[int, bytes]:
        current = self._bank(st, selection.bank)
        values = {i: current[i] for i in selection.indexes}
        if given is not None:
            missing = [i for i in selection.indexes if i not in given]
            if missing:
                raise ConfigError(f"pcr_values lacks PCR(s) {missing} of {selection}")
            values = {i: given[i] for i in selection.indexes}
        return values

    def _seal_object(self, st: State, secret: bytes, policy: bytes, auth: bytes) -> SealedObject:
        seed = os.urandom(32)
        unique = hashlib.sha256(seed + secret).digest()
        pub = Public(Alg.KEYEDHASH, Alg.SHA256, SEALED_ATTRIBUTES, policy, KeyedHashParms(), unique)
        sens = Sensitive(Alg.KEYEDHASH, auth, seed, secret)
        return SealedObject(public=pub.to_bytes(), private=self._wrap(st, pub.name, sens))

    @staticmethod
    def _check_seal_inputs(secret: bytes, auth_value: bytes | None) -> bytes:
        if len(secret) > limits.TPM_MAX_SEALED_SIZE:
            raise TpmError(
                f"secret is {len(secret)} bytes, a TPM seals at most {limits.TPM_MAX_SEALED_SIZE}",
                rc=RC_SIZE,
            )
        auth = auth_value_trim(auth_value or b"")
        if len(auth) > 32:
            raise TpmError(f"auth value is {len(auth)} bytes, at most 32", rc=RC_SIZE)
        return auth

    def seal(
        self,
        secret: bytes,
        selection: PcrSelection,
        *,
        pcr_values: Mapping[int, bytes] | None = None,
        auth_value: bytes | None = None,
    ) -> SealedObject:
        auth = self._check_seal_inputs(secret, auth_value)
        st = self._read()
        values = self._policy_values(st, selection, pcr_values)
        try:
            policy = sealing_policy(selection, values, with_auth_value=auth_value is not None)
        except ConfigError as exc:
            raise TpmError(f"cannot compute the sealing policy: {exc}", rc=RC_VALUE) from exc
        return self._seal_object(st, secret, policy, auth)

    def seal_to_policy(
        self, secret: bytes, policy: bytes, *, auth_value: bytes | None = None
    ) -> SealedObject:
        auth = self._check_seal_inputs(secret, auth_value)
        if len(policy) != HashAlg.SHA256.digest_size:
            raise TpmError(
                f"authPolicy is {len(policy)} bytes, the SHA-256 nameAlg needs 32", rc=RC_SIZE
            )
        return self._seal_object(self._read(), secret, policy, auth)

    def unseal(
        self, sealed: SealedObject, selection: PcrSelection, *, auth_value: bytes | None = None
    ) -> bytes:
        st = self._read()
        pub, sens = self._load(st, sealed.public, sealed.private)
        if pub.type != Alg.KEYEDHASH or pub.attributes & ObjectAttr.SIGN_ENCRYPT:
            raise TpmError("object is not a sealed data object", rc=RC_TYPE)
        values = {i: self._bank(st, selection.bank)[i] for i in selection.indexes}
        session = sealing_policy(selection, values, with_auth_value=auth_value is not None)
        if not hmac.compare_digest(session, pub.auth_policy):
            raise PolicyError(
                f"TPM policy check failed (rc 0x{RC_POLICY_FAIL:x}): the policy for {selection}"
                f"{' + auth value' if auth_value is not None else ''} with the current PCR "
                f"values is {session.hex()}, the object requires {pub.auth_policy.hex()}"
            )
        if auth_value is not None and not hmac.compare_digest(
            auth_value_trim(auth_value), sens.auth_value
        ):
            raise PolicyError(f"TPM auth value check failed (rc 0x{RC_AUTH_FAIL:x})")
        return sens.sensitive

    # --- signed policies ---------------------------------------------------------------------

    @staticmethod
    def _external(public: bytes) -> tuple[Public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey]:
        """TPM2_LoadExternal checks of a public-only object; the key it holds."""
        try:
            pub = Public.parse(public)
        except FormatError as exc:
            raise TpmError(f"public area is malformed: {exc}", rc=RC_SIZE) from exc
        if pub.name_alg != Alg.SHA256:
            raise TpmError(f"nameAlg 0x{pub.name_alg:04x} is not SHA-256", rc=RC_HASH)
        parms, unique = pub.parameters, pub.unique
        if isinstance(parms, RsaParms) and isinstance(unique, bytes):
            if len(unique) * 8 != parms.key_bits:
                raise TpmError(
                    f"RSA modulus is {len(unique) * 8} bits, keyBits says {parms.key_bits}",
                    rc=RC_KEY,
                )
            try:
                rkey = rsa.RSAPublicNumbers(
                    parms.exponent or 65537, int.from_bytes(unique, "big")
                ).public_key()
            except ValueError as exc:
                raise TpmError(f"RSA public key is not valid: {exc}", rc=RC_KEY) from exc
            return pub, rkey
        if isinstance(parms, EccParms) and isinstance(unique, EccPoint):
            if parms.curve != Curve.NIST_P256:
                raise TpmError(f"ECC curve 0x{parms.curve:04x} is not supported", rc=RC_CURVE)
            try:
                ekey = ec.EllipticCurvePublicNumbers(
                    int.from_bytes(unique.x, "big"), int.from_bytes(unique.y, "big"), ec.SECP256R1()
                ).public_key()
            except ValueError as exc:
                raise TpmError(f"ECC point is not on the curve: {exc}", rc=RC_ECC_POINT) from exc
            return pub, ekey
        raise TpmError("only RSA and ECC public keys can verify signatures", rc=RC_TYPE)

    @staticmethod
    def _owner_proof(st: State) -> bytes:
        return kdfa(Alg.SHA256, st.proof, b"OWNER PROOF", b"", b"", 256)

    def _ticket_hmac(self, st: State, digest: bytes, key_name: bytes) -> bytes:
        """TPMT_TK_VERIFIED.digest = HMAC(proof(owner), TPM_ST_VERIFIED || digest || keyName)."""
        return hmac.digest(self._owner_proof(st), u16(ST_VERIFIED) + digest + key_name, "sha256")

    def load_external(self, public: bytes) -> bytes:
        pub, _ = self._external(public)
        return pub.name

    def verify_signature(self, public: bytes, digest: bytes, signature: bytes) -> bytes:
        st = self._read()
        pub, key = self._external(public)
        if not pub.attributes & ObjectAttr.SIGN_ENCRYPT:
            raise TpmError("the key is not a signing key", rc=RC_ATTRIBUTES)
        sig = Signature.parse(signature)
        size = HASH_SIZES.get(sig.hash_alg)
        if size is None or len(digest) != size:
            raise TpmError(
                f"digest is {len(digest)} bytes, the signature's hash needs {size}", rc=RC_SIZE
            )
        prehashed = utils.Prehashed(_HASHES[sig.hash_alg]())
        try:
            if isinstance(key, rsa.RSAPublicKey):
                if sig.sig_alg != Alg.RSASSA:
                    raise TpmError("RSA keys verify RSASSA signatures only", rc=RC_SCHEME)
                key.verify(sig.sig, digest, padding.PKCS1v15(), prehashed)
            else:
                if sig.sig_alg != Alg.ECDSA:
                    raise TpmError("ECC keys verify ECDSA signatures only", rc=RC_SCHEME)
                der = utils.encode_dss_signature(
                    int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big")
                )
                key.verify(der, digest, ec.ECDSA(prehashed))
        except InvalidSignature as exc:
            raise SignatureError(
                f"TPM2_VerifySignature: the signature does not verify with key "
                f"{pub.name.hex()} (rc 0x{RC_SIGNATURE:x})"
            ) from exc
        ticket = VerifiedTicket(TPM_RH_OWNER, self._ticket_hmac(st, digest, pub.name))
        return ticket.to_bytes()

    def _check_approval(self, st: State, approval: PolicyApproval) -> None:
        """PolicyPCR(approval.selection) + the checks of TPM2_PolicyAuthorize."""
        values = {i: self._bank(st, approval.selection.bank)[i] for i in approval.selection.indexes}
        session = policy_pcr(approval.selection, values)
        if not hmac.compare_digest(session, approval.approved_policy):
            raise PolicyError(
                f"TPM2_PolicyAuthorize refused (rc 0x{RC_VALUE:x}): the PCR policy of "
                f"{approval.selection} with the current values is {session.hex()}, the "
                f"approved policy is {approval.approved_policy.hex()}"
            )
        name = approval.key_name
        if len(name) != 34 or name[:2] != u16(Alg.SHA256):
            raise TpmError("keySign is not a SHA-256 object Name", rc=RC_SIZE)
        if len(approval.policy_ref) > limits.TPM_MAX_DIGEST_SIZE:
            raise TpmError("policyRef is longer than a digest", rc=RC_SIZE)
        ticket = VerifiedTicket.parse(approval.ticket)
        expected = self._ticket_hmac(
            st, authorize_digest(approval.approved_policy, approval.policy_ref), name
        )
        if ticket.hierarchy != TPM_RH_OWNER or not hmac.compare_digest(ticket.digest, expected):
            raise PolicyError(
                f"TPM2_PolicyAuthorize refused (rc 0x{RC_VALUE:x}): the ticket was not issued "
                f"by this TPM for this approved policy and key {name.hex()}"
            )

    def unseal_authorized(
        self,
        sealed: SealedObject,
        approval: PolicyApproval,
        *,
        selection: PcrSelection | None = None,
        auth_value: bytes | None = None,
    ) -> bytes:
        st = self._read()
        pub, sens = self._load(st, sealed.public, sealed.private)
        if pub.type != Alg.KEYEDHASH or pub.attributes & ObjectAttr.SIGN_ENCRYPT:
            raise TpmError("object is not a sealed data object", rc=RC_TYPE)
        self._check_approval(st, approval)
        values = None
        if selection is not None:
            values = {i: self._bank(st, selection.bank)[i] for i in selection.indexes}
        session = authorized_sealing_policy(
            approval.key_name,
            selection=selection,
            values=values,
            with_auth_value=auth_value is not None,
            policy_ref=approval.policy_ref,
        )
        if not hmac.compare_digest(session, pub.auth_policy):
            raise PolicyError(
                f"TPM policy check failed (rc 0x{RC_POLICY_FAIL:x}): the session digest "
                f"{session.hex()} (PolicyAuthorize by {approval.key_name.hex()[:16]}..."
                f"{f', PolicyPCR {selection}' if selection else ''}"
                f"{', PolicyAuthValue' if auth_value is not None else ''}) is not the "
                f"object's authPolicy {pub.auth_policy.hex()}"
            )
        if auth_value is not None and not hmac.compare_digest(
            auth_value_trim(auth_value), sens.auth_value
        ):
            raise PolicyError(f"TPM auth value check failed (rc 0x{RC_AUTH_FAIL:x})")
        return sens.sensitive

    # --- NV ----------------------------------------------------------------------------------

    @staticmethod
    def _check_index(index: int) -> None:
        if not NV_INDEX_FIRST <= index <= NV_INDEX_LAST:
            raise TpmError(f"NV index 0x{index:08x} is not an NV handle", rc=RC_HANDLE)

    def _nv(self, st: State, index: int, typ: str) -> NvIndex:
        self._check_index(index)
        entry = st.nv.get(index)
        if entry is None:
            raise NotFoundError(f"NV index 0x{index:08x} is not defined")
        if entry.type != typ:
            raise TpmError(
                f"NV index 0x{index:08x} is a {entry.type} index, not a {typ} index",
                rc=RC_ATTRIBUTES,
            )
        return entry

    def _define(self, index: int, typ: str) -> None:
        self._check_index(index)

        def change(st: State) -> None:
            if index in st.nv:
                raise ConflictError(f"NV index 0x{index:08x} is already defined (rc 0x14c)")
            # Defined and initialised at once, as the tss backend does (NV_Increment /
            # NV_SetBits(0) right after NV_DefineSpace): a counter starts one above the
            # highest deleted counter, bits start at every bit ever set at this handle.
            if typ == "counter":
                if st.counter_max + 1 >= _U64:
                    raise TpmError("NV counters are exhausted", rc=RC_VALUE)
                st.nv[index] = NvIndex(typ, st.counter_max + 1)
            else:
                st.nv[index] = NvIndex(typ, st.fuse_memory.get(index, 0))

        self._mutate(change)

    def nv_define_counter(self, index: int) -> None:
        self._define(index, "counter")

    def nv_define_bits(self, index: int) -> None:
        self._define(index, "bits")

    def nv_increment(self, index: int) -> int:
        def change(st: State) -> int:
            entry = self._nv(st, index, "counter")
            start = st.counter_max if entry.value is None else entry.value
            if start + 1 >= _U64:
                raise TpmError(f"NV counter 0x{index:08x} is at its maximum", rc=RC_VALUE)
            entry.value = start + 1
            return entry.value

        return self._mutate(change)

    def _read_nv(self, index: int, typ: str) -> int:
        entry = self._nv(self._read(), index, typ)
        if entry.value is None:
            raise TpmError(
                f"NV index 0x{index:08x} has never been written (TPM_RC_NV_UNINITIALIZED)",
                rc=RC_NV_UNINITIALIZED,
            )
        return entry.value

    def nv_read_counter(self, index: int) -> int:
        return self._read_nv(index, "counter")

    def nv_set_bits(self, index: int, bits: int) -> None:
        if not 0 <= bits < _U64:
            raise TpmError(f"bits 0x{bits:x} do not fit 64 bits", rc=RC_VALUE)

        def change(st: State) -> None:
            entry = self._nv(st, index, "bits")
            entry.value = (entry.value or 0) | bits
            st.fuse_memory[index] = st.fuse_memory.get(index, 0) | entry.value

        self._mutate(change)

    def nv_read_bits(self, index: int) -> int:
        return self._read_nv(index, "bits")

    def nv_undefine(self, index: int) -> None:
        def change(st: State) -> None:
            self._check_index(index)
            entry = st.nv.pop(index, None)
            if entry is None:
                raise NotFoundError(f"NV index 0x{index:08x} is not defined")
            if entry.type == "counter" and entry.value is not None:
                st.counter_max = max(st.counter_max, entry.value)

        self._mutate(change)

    # --- keys ----------------------------------------------------------------------------------

    def _ek_key(self) -> rsa.RSAPrivateKey:
        st = self._read()
        if st.ek_private is None:

            def change(s: State) -> None:
                if s.ek_private is None:  # another process may have made it meanwhile
                    key = rsa.generate_private_key(65537, 2048)
                    s.ek_private = key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    ).decode()

            self._mutate(change)
            st = self._read()
        assert st.ek_private is not None
        cached = self._ek_cache
        if cached is not None and cached[0] == st.ek_private:
            return cached[1]
        key = serialization.load_pem_private_key(st.ek_private.encode(), None)
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 2048:
            raise TpmError("software TPM state holds a bad EK")
        # loading and checking an RSA key costs ~0.1 s; reuse it while the state holds it
        self._ek_cache = (st.ek_private, key)
        return key

    def ek_public(self) -> bytes:
        return ek_template_public(self._ek_key().public_key()).to_bytes()

    def ek_certificate(self) -> bytes | None:
        """None: no manufacturer certified this key (it lives in a file)."""
        return None

    def _make_key(self, pub_of: Public, secret: bytes) -> TpmKey:
        st = self._read()
        sens = Sensitive(pub_of.type, b"", os.urandom(32), secret)
        return TpmKey(pub_of.to_bytes(), self._wrap(st, pub_of.name, sens), pub_of.name)

    def create_ak(self) -> TpmKey:
        key = ec.generate_private_key(ec.SECP256R1())
        pub = _ecc_public(AK_ATTRIBUTES, Scheme(Alg.ECDSA, Alg.SHA256), key.public_key())
        return self._make_key(pub, key.private_numbers().private_value.to_bytes(32, "big"))

    def create_signing_key(self, algorithm: str = "ecc-p256") -> TpmKey:
        if algorithm == "ecc-p256":
            key = ec.generate_private_key(ec.SECP256R1())
            pub = _ecc_public(
                SIGNING_KEY_ATTRIBUTES, Scheme(Alg.ECDSA, Alg.SHA256), key.public_key()
            )
            return self._make_key(pub, key.private_numbers().private_value.to_bytes(32, "big"))
        if algorithm == "rsa2048":
            rkey = rsa.generate_private_key(65537, 2048)
            n = rkey.public_key().public_numbers().n.to_bytes(256, "big")
            parms = RsaParms(SymDef(), Scheme(Alg.RSASSA, Alg.SHA256), 2048, 0)
            pub = Public(Alg.RSA, Alg.SHA256, SIGNING_KEY_ATTRIBUTES, b"", parms, n)
            return self._make_key(pub, rkey.private_numbers().p.to_bytes(128, "big"))
        raise ConfigError(f"unknown key algorithm {algorithm!r}: expected ecc-p256 or rsa2048")

    def _signer(
        self, st: State, key: TpmKey
    ) -> tuple[Public, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]:
        pub, sens = self._load(st, key.public, key.private, key.name)
        if not pub.attributes & ObjectAttr.SIGN_ENCRYPT:
            raise TpmError("key is not a signing key", rc=RC_ATTRIBUTES)
        if isinstance(pub.parameters, EccParms) and isinstance(pub.unique, EccPoint):
            priv = ec.derive_private_key(int.from_bytes(sens.sensitive, "big"), ec.SECP256R1())
            if priv.public_key().public_numbers().x != int.from_bytes(pub.unique.x, "big"):
                raise TpmError("key pair is inconsistent", rc=RC_INTEGRITY)
            return pub, priv
        if isinstance(pub.parameters, RsaParms) and isinstance(pub.unique, bytes):
            n, p = int.from_bytes(pub.unique, "big"), int.from_bytes(sens.sensitive, "big")
            if p <= 1 or n % p:
                raise TpmError("key pair is inconsistent", rc=RC_INTEGRITY)
            q, e = n // p, pub.parameters.exponent or 65537
            d = pow(e, -1, (p - 1) * (q - 1))
            nums = rsa.RSAPrivateNumbers(
                p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, n)
            )
            return pub, nums.private_key()
        raise TpmError("unsupported key type", rc=RC_TYPE)

    def sign(self, key: TpmKey, digest: bytes) -> bytes:
        if len(digest) != 32:
            raise TpmError(f"digest is {len(digest)} bytes, expected 32 (SHA-256)", rc=RC_SIZE)
        pub, priv = self._signer(self._read(), key)
        if pub.attributes & ObjectAttr.RESTRICTED:
            raise TpmError(
                "a restricted key signs only TPM-generated data or with a hash-check ticket",
                rc=RC_TICKET,
            )
        prehashed = utils.Prehashed(hashes.SHA256())
        if isinstance(priv, ec.EllipticCurvePrivateKey):
            return _sig_from_der(priv.sign(digest, ec.ECDSA(prehashed)))
        sig = priv.sign(digest, padding.PKCS1v15(), prehashed)
        return Signature(Alg.RSASSA, Alg.SHA256, sig=sig).to_bytes()

    # --- attestation ---------------------------------------------------------------------------

    def _attest(
        self, st: State, ak: TpmKey, nonce: bytes, typ: int, body: QuoteInfo | CertifyInfo
    ) -> Attestation:
        if len(nonce) > limits.TPM_MAX_NONCE_SIZE:
            raise TpmError(
                f"qualifying data is {len(nonce)} bytes, at most {limits.TPM_MAX_NONCE_SIZE}",
                rc=RC_SIZE,
            )
        pub, priv = self._signer(st, ak)
        if not pub.attributes & ObjectAttr.RESTRICTED or not isinstance(
            priv, ec.EllipticCurvePrivateKey
        ):
            raise TpmError("the AK must be a restricted ECDSA signing key", rc=RC_ATTRIBUTES)
        qn = _qualified_name(self._srk_qn(st), pub.name)
        # keys outside the endorsement/platform hierarchies see obfuscated counters
        mask = kdfa(Alg.SHA256, st.proof, b"OBFUSCATE", qn, b"", 128)
        firmware = (FIRMWARE_VERSION + int.from_bytes(mask[:8], "big")) % _U64
        reset = (st.reset_count + int.from_bytes(mask[8:12], "big")) % 2**32
        restart = (st.restart_count + int.from_bytes(mask[12:16], "big")) % 2**32
        clock = ClockInfo(st.clock(self._now()) % _U64, reset, restart, True)
        attest = Attest(typ, qn, nonce, clock, firmware, body).to_bytes()
        return Attestation(attest, _sig_from_der(priv.sign(attest, ec.ECDSA(hashes.SHA256()))))

    def quote(self, ak: TpmKey, nonce: bytes, selection: PcrSelection) -> Attestation:
        st = self._read()
        values = {i: self._bank(st, selection.bank)[i] for i in selection.indexes}
        body = QuoteInfo(
            PcrSelectionList.single(selection.bank.alg_id, selection.indexes),
            pcr_digest(selection, values, HashAlg.SHA256),
        )
        return self._attest(st, ak, nonce, ST_ATTEST_QUOTE, body)

    def certify(self, ak: TpmKey, key: TpmKey, nonce: bytes) -> Attestation:
        st = self._read()
        pub, _ = self._load(st, key.public, key.private, key.name)
        body = CertifyInfo(pub.name, _qualified_name(self._srk_qn(st), pub.name))
        return self._attest(st, ak, nonce, ST_ATTEST_CERTIFY, body)

    def activate_credential(self, ak: TpmKey, credential_blob: bytes, secret: bytes) -> bytes:
        st = self._read()
        pub, _ = self._load(st, ak.public, ak.private, ak.name)
        ek = self._ek_key()
        try:
            encrypted = EncryptedSecret.parse(secret).secret
        except FormatError as exc:
            raise TpmError(f"encrypted secret is malformed: {exc}", rc=RC_SIZE) from exc
        try:
            seed = ek.decrypt(encrypted, oaep(Alg.SHA256))
        except ValueError as exc:
            raise TpmError(
                "the encrypted secret does not decrypt with this TPM's EK", rc=RC_VALUE
            ) from exc
        try:
            return credential_to_secret(credential_blob, pub.name, seed, Alg.SHA256, 128)
        except (VerificationError, FormatError) as exc:
            raise TpmError(f"credential does not activate: {exc}", rc=RC_INTEGRITY) from exc

    def get_random(self, size: int) -> bytes:
        if not 0 <= size <= limits.TPM_MAX_RANDOM_SIZE:
            raise ConfigError(f"random size {size} out of range 0..{limits.TPM_MAX_RANDOM_SIZE}")
        return os.urandom(size)
