"""The tpm2-pytss backend of the ``Tpm`` protocol: swtpm in tests, /dev/tpmrm0 on devices.

``TssTpm(tcti)`` opens an ESAPI context on a libtss2 TCTI string: ``swtpm:host=H,port=P``
or ``device:/dev/tpmrm0`` (what :func:`bastion.tpm.uri.open_tpm` passes). Every method
is one self-contained TPM conversation: it re-creates the storage primary (systemd's
legacy ECC P-256 template) or the endorsement key (TCG template L-1, from
``tpm2_pytss.utils.create_ek_template``) when it needs them, loads the caller's
(public, private) blobs, runs the command and flushes every transient object and
session it created before returning, also on failure. Nothing stays loaded between
calls, so swtpm's three object and three session slots never run out and the TPM can
be shared with tpm2-tools. ADR 0004 records why.

TSS errors become :class:`~bastion.errors.TpmError` with the response code and the
libtss2 decoded text; policy failures in unseal become
:class:`~bastion.errors.PolicyError`, a defined NV index ``ConflictError`` and an
undefined one ``NotFoundError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_ECC,
    TPM2_NT,
    TPM2_RC,
    TPM2_RH,
    TPM2_SE,
    TPM2_ST,
    TPMA_NV,
    TPMA_OBJECT,
    TPMA_SESSION,
)
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NAME,
    TPM2B_NONCE,
    TPM2B_NV_PUBLIC,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_NV_PUBLIC,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SIGNATURE,
    TPMT_SYM_DEF,
    TPMT_TK_HASHCHECK,
    TPMT_TK_VERIFIED,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template

from bastion import limits
from bastion.errors import (
    ConfigError,
    ConflictError,
    FormatError,
    NotFoundError,
    PolicyError,
    SignatureError,
    TpmError,
)
from bastion.tpm.base import (
    PCR_COUNT,
    Attestation,
    HashAlg,
    PcrSelection,
    PolicyApproval,
    SealedObject,
    TpmKey,
)

#: NV index handle range (TPM_HT_NV_INDEX)
NV_INDEX_FIRST = 0x01000000
NV_INDEX_LAST = 0x01FFFFFF
_NV_ATTRS = (
    TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA
)
_POLICY_ERRORS = frozenset(
    {TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED, TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH}
)
_RANDOM_CHUNK = 32  # every TPM returns at least one SHA-256 digest's worth per call
_PCR_CHUNK = 8  # TPML_DIGEST holds at most 8 digests per PCR_Read response


def srk_template() -> TPMT_PUBLIC:
    """systemd's legacy storage primary: ECC P-256, AES-128-CFB, empty unique."""
    pub = TPMT_PUBLIC(
        type=TPM2_ALG.ECC,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.DECRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH,
    )
    ecc = pub.parameters.eccDetail
    ecc.symmetric.algorithm = TPM2_ALG.AES
    ecc.symmetric.keyBits.aes = 128
    ecc.symmetric.mode.aes = TPM2_ALG.CFB
    ecc.scheme.scheme = TPM2_ALG.NULL
    ecc.curveID = TPM2_ECC.NIST_P256
    ecc.kdf.scheme = TPM2_ALG.NULL
    return pub


def ak_template() -> TPMT_PUBLIC:
    """Restricted ECDSA P-256/SHA-256 signing key (``tpm2_createak -G ecc -s ecdsa``)."""
    return TPMT_PUBLIC.parse(
        "ecc256:ecdsa-sha256:null",
        objectAttributes=TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.SIGN_ENCRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH,
    )


def signing_key_template(algorithm: str) -> TPMT_PUBLIC:
    """Non-restricted, non-exportable signing key: ``ecc-p256`` (ECDSA) or ``rsa2048`` (RSASSA)."""
    attrs = (
        TPMA_OBJECT.SIGN_ENCRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
    )
    if algorithm == "ecc-p256":
        return TPMT_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)
    if algorithm == "rsa2048":
        return TPMT_PUBLIC.parse("rsa2048:rsassa-sha256:null", objectAttributes=attrs)
    raise ConfigError(f"signing key algorithm {algorithm!r}: expected 'ecc-p256' or 'rsa2048'")


def sealed_template(policy: bytes) -> TPMT_PUBLIC:
    """systemd's sealed-data template: keyedhash, fixedTPM|fixedParent, the given policy."""
    pub = TPMT_PUBLIC(
        type=TPM2_ALG.KEYEDHASH,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT,
        authPolicy=policy,
    )
    pub.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
    return pub


def _tss_selection(selection: PcrSelection) -> TPML_PCR_SELECTION:
    return TPML_PCR_SELECTION.parse(str(selection))


def _unmarshal_exact(cls: Any, data: bytes, what: str) -> Any:
    """Unmarshal a TPM2B that must fill ``data`` exactly (FormatError otherwise)."""
    if len(data) > limits.TPM2B_MAX_SIZE + 2:
        raise FormatError(f"{what} is {len(data)} bytes, limit {limits.TPM2B_MAX_SIZE + 2}")
    try:
        obj, used = cls.unmarshal(data)
    except (TSS2_Exception, ValueError, TypeError) as exc:
        raise FormatError(f"{what} is not a valid {cls.__name__}: {exc}") from exc
    if used != len(data):
        raise FormatError(f"{what}: {cls.__name__} uses {used} of {len(data)} bytes")
    return obj


class _Scope:
    """Transient objects, sessions and ESYS_TR metadata created by one operation."""

    def __init__(self, ectx: ESAPI) -> None:
        self.ectx = ectx
        self.flush: list[ESYS_TR] = []
        self.close: list[ESYS_TR] = []

    def loaded(self, handle: ESYS_TR) -> ESYS_TR:
        self.flush.append(handle)
        return handle

    def drop(self, handle: ESYS_TR) -> None:
        """Flush one handle now, to free its slot before the operation ends."""
        self.flush.remove(handle)
        self.ectx.flush_context(handle)

    def release(self) -> None:
        for handle in reversed(self.flush):
            with contextlib.suppress(TSS2_Exception):
                self.ectx.flush_context(handle)
        for handle in reversed(self.close):
            with contextlib.suppress(TSS2_Exception):
                self.ectx.tr_close(handle)
        self.flush.clear()
        self.close.clear()


class TssTpm:
    """The ``Tpm`` protocol over tpm2-pytss ESAPI. ``tcti`` is a libtss2 TCTI string."""

    def __init__(self, tcti: str) -> None:
        os.environ.setdefault("TSS2_LOG", "all+none")
        self.tcti = tcti
        self._ek_public: bytes | None = None
        self._ectx: Any = None
        try:
            self._ectx = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise TpmError(f"cannot open TPM {tcti!r}: {exc}", rc=int(exc.rc)) from exc

    def __repr__(self) -> str:
        return f"TssTpm({self.tcti!r})"

    # --- plumbing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _op(self, what: str, *, policy: bool = False) -> Iterator[_Scope]:
        if self._ectx is None:
            raise TpmError(f"TPM {what}: the connection to {self.tcti!r} is closed")
        scope = _Scope(self._ectx)
        try:
            yield scope
        except TSS2_Exception as exc:
            raise self._error(exc, what, policy=policy) from exc
        finally:
            scope.release()

    @staticmethod
    def _error(exc: TSS2_Exception, what: str, *, policy: bool) -> Exception:
        rc = int(exc.rc)
        message = f"TPM {what} failed: {exc} (rc 0x{rc:03x})"
        if policy and exc.error in _POLICY_ERRORS:
            return PolicyError(f"TPM refused {what}: the PCR policy or auth value does not match")
        if exc.error == TPM2_RC.NV_DEFINED:
            return ConflictError(f"TPM {what}: the NV index is already defined")
        if exc.error == TPM2_RC.LOCKOUT:
            return TpmError(
                f"TPM refused {what}: the TPM is in dictionary-attack lockout after too many "
                "wrong auth values; wait for it to recover or clear it with "
                "tpm2_dictionarylockout -c (rc 0x921)",
                rc=rc,
            )
        return TpmError(message, rc=rc)

    def _srk(self, scope: _Scope) -> ESYS_TR:
        handle, *_ = self._ectx.create_primary(
            None, TPM2B_PUBLIC(srk_template()), primary_handle=ESYS_TR.OWNER
        )
        return scope.loaded(handle)

    def _ek(self, scope: _Scope) -> tuple[ESYS_TR, TPM2B_PUBLIC]:
        _cert, template = create_ek_template("EK-RSA2048", NVReadEK(self._ectx))
        handle, public, *_ = self._ectx.create_primary(
            None, template, primary_handle=ESYS_TR.ENDORSEMENT
        )
        return scope.loaded(handle), public

    def _load(self, scope: _Scope, parent: ESYS_TR, public: bytes, private: bytes) -> ESYS_TR:
        pub = _unmarshal_exact(TPM2B_PUBLIC, public, "key public")
        priv = _unmarshal_exact(TPM2B_PRIVATE, private, "key private")
        return scope.loaded(self._ectx.load(parent, priv, pub))

    def _load_key(self, scope: _Scope, key: TpmKey) -> ESYS_TR:
        srk = self._srk(scope)
        handle = self._load(scope, srk, key.public, key.private)
        scope.drop(srk)
        return handle

    def _create(self, template: TPMT_PUBLIC, what: str) -> TpmKey:
        with self._op(what) as scope:
            srk = self._srk(scope)
            priv, pub, *_ = self._ectx.create(srk, TPM2B_SENSITIVE_CREATE(), TPM2B_PUBLIC(template))
            return TpmKey(public=pub.marshal(), private=priv.marshal(), name=bytes(pub.get_name()))

    def _nv(self, scope: _Scope, index: int) -> ESYS_TR:
        _check_nv_index(index)
        try:
            handle = self._ectx.tr_from_tpmpublic(index)
        except TSS2_Exception as exc:
            if exc.error == TPM2_RC.HANDLE:
                raise NotFoundError(f"NV index 0x{index:08x} is not defined") from exc
            raise
        scope.close.append(handle)
        return handle

    # --- PCRs -----------------------------------------------------------------------------
    def pcr_read(self, selection: PcrSelection) -> dict[int, bytes]:
        """Current values of the selected PCRs (read in chunks the TPM can return)."""
        out: dict[int, bytes] = {}
        with self._op(f"PCR_Read {selection}"):
            pending = list(selection.indexes)
            while pending:
                chunk = PcrSelection(selection.bank, tuple(pending[:_PCR_CHUNK]))
                _, sel_out, digests = self._ectx.pcr_read(_tss_selection(chunk))
                got = _selected_indexes(sel_out, selection.bank)
                values = [bytes(d) for d in digests]
                if not got or len(got) != len(values):
                    raise TpmError(f"TPM returned no values for PCRs {chunk}")
                for index, value in zip(got, values, strict=True):
                    out[index] = value
                pending = [i for i in pending if i not in out]
        return out

    def pcr_extend(self, index: int, digests: Mapping[HashAlg, bytes]) -> None:
        """Extend PCR ``index`` in each given bank."""
        if not 0 <= index < PCR_COUNT:
            raise ConfigError(f"PCR index {index} out of range 0..{PCR_COUNT - 1}")
        if not digests:
            raise ConfigError("pcr_extend needs at least one digest")
        values = []
        for bank, digest in digests.items():
            if len(digest) != bank.digest_size:
                raise FormatError(
                    f"{bank} digest for PCR {index} is {len(digest)} bytes, "
                    f"expected {bank.digest_size}"
                )
            ha = TPMT_HA(hashAlg=TPM2_ALG(bank.alg_id))
            setattr(ha.digest, bank.value, digest)
            values.append(ha)
        with self._op(f"PCR_Extend {index}"):
            self._ectx.pcr_extend(ESYS_TR.PCR0 + index, TPML_DIGEST_VALUES(values))

    # --- sealing --------------------------------------------------------------------------
    def _policy_digest(
        self,
        scope: _Scope,
        selection: PcrSelection,
        pcr_values: Mapping[int, bytes] | None,
        auth: bool,
    ) -> bytes:
        pcr_digest = b""
        if pcr_values is not None:
            if set(pcr_values) != set(selection.indexes):
                raise ConfigError(
                    f"pcr_values cover PCRs {sorted(pcr_values)}, selection is {selection}"
                )
            for i, value in pcr_values.items():
                if len(value) != selection.bank.digest_size:
                    raise FormatError(
                        f"value for PCR {i} is {len(value)} bytes, "
                        f"expected {selection.bank.digest_size}"
                    )
            joined = b"".join(pcr_values[i] for i in selection.indexes)
            pcr_digest = hashlib.sha256(joined).digest()
        trial = scope.loaded(
            self._ectx.start_auth_session(
                ESYS_TR.NONE,
                ESYS_TR.NONE,
                TPM2_SE.TRIAL,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                TPM2_ALG.SHA256,
            )
        )
        self._ectx.policy_pcr(trial, pcr_digest, _tss_selection(selection))
        if auth:
            self._ectx.policy_auth_value(trial)
        digest = bytes(self._ectx.policy_get_digest(trial))
        scope.drop(trial)
        return digest

    def seal(
        self,
        secret: bytes,
        selection: PcrSelection,
        *,
        pcr_values: Mapping[int, bytes] | None = None,
        auth_value: bytes | None = None,
    ) -> SealedObject:
        """Seal ``secret`` to PolicyPCR (+ PolicyAuthValue) under the storage primary."""
        _check_secret(secret, auth_value)
        with self._op(f"seal to {selection}") as scope:
            policy = self._policy_digest(scope, selection, pcr_values, auth_value is not None)
            srk = self._srk(scope)
            sensitive = TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(secret))
            if auth_value:
                sensitive.userAuth = auth_value
            priv, pub, *_ = self._ectx.create(
                srk, TPM2B_SENSITIVE_CREATE(sensitive), TPM2B_PUBLIC(sealed_template(policy))
            )
            return SealedObject(public=pub.marshal(), private=priv.marshal())

    def unseal(
        self, sealed: SealedObject, selection: PcrSelection, *, auth_value: bytes | None = None
    ) -> bytes:
        """Unseal in a salted, response-encrypted policy session; PolicyError on mismatch."""
        with self._op(f"unseal with {selection}", policy=True) as scope:
            srk = self._srk(scope)
            handle = self._load(scope, srk, sealed.public, sealed.private)
            session = scope.loaded(
                self._ectx.start_auth_session(
                    srk,
                    ESYS_TR.NONE,
                    TPM2_SE.POLICY,
                    TPMT_SYM_DEF.parse("aes128cfb"),
                    TPM2_ALG.SHA256,
                )
            )
            self._ectx.trsess_set_attributes(
                session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT
            )
            self._ectx.policy_pcr(session, b"", _tss_selection(selection))
            if auth_value is not None:
                self._ectx.policy_auth_value(session)
                self._ectx.tr_set_auth(handle, auth_value)
            return bytes(self._ectx.unseal(handle, session1=session))

    def seal_to_policy(
        self, secret: bytes, policy: bytes, *, auth_value: bytes | None = None
    ) -> SealedObject:
        """Seal ``secret`` under the storage primary with ``policy`` as authPolicy."""
        _check_secret(secret, auth_value)
        if len(policy) != HashAlg.SHA256.digest_size:
            raise ConfigError(f"authPolicy is {len(policy)} bytes, the SHA-256 nameAlg needs 32")
        with self._op("seal to a policy digest") as scope:
            srk = self._srk(scope)
            sensitive = TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(secret))
            if auth_value:
                sensitive.userAuth = auth_value
            priv, pub, *_ = self._ectx.create(
                srk, TPM2B_SENSITIVE_CREATE(sensitive), TPM2B_PUBLIC(sealed_template(policy))
            )
            return SealedObject(public=pub.marshal(), private=priv.marshal())

    # --- signed policies (PolicyAuthorize) ------------------------------------------------
    def _load_external(self, scope: _Scope, public: bytes) -> ESYS_TR:
        pub = _unmarshal_exact(TPM2B_PUBLIC, public, "external public key")
        return scope.loaded(self._ectx.load_external(pub, None, ESYS_TR.OWNER))

    def load_external(self, public: bytes) -> bytes:
        """TPM2_LoadExternal in the owner hierarchy; the Name the TPM computed."""
        with self._op("LoadExternal") as scope:
            handle = self._load_external(scope, public)
            return bytes(self._ectx.tr_get_name(handle))

    def verify_signature(self, public: bytes, digest: bytes, signature: bytes) -> bytes:
        """TPM2_VerifySignature with a loaded external key; the TPMT_TK_VERIFIED ticket."""
        if len(digest) > limits.TPM_MAX_DIGEST_SIZE:
            raise FormatError(f"digest is {len(digest)} bytes, at most a SHA-512 digest")
        sig = _unmarshal_exact(TPMT_SIGNATURE, signature, "signature")
        with self._op("VerifySignature") as scope:
            handle = self._load_external(scope, public)
            try:
                ticket = self._ectx.verify_signature(handle, TPM2B_DIGEST(digest), sig)
            except TSS2_Exception as exc:
                if exc.error == TPM2_RC.SIGNATURE:
                    raise SignatureError(
                        "TPM2_VerifySignature: the signature does not verify with key "
                        f"{bytes(self._ectx.tr_get_name(handle)).hex()} (rc 0x{int(exc.rc):03x})"
                    ) from exc
                raise
            return bytes(ticket.marshal())

    def unseal_authorized(
        self,
        sealed: SealedObject,
        approval: PolicyApproval,
        *,
        selection: PcrSelection | None = None,
        auth_value: bytes | None = None,
    ) -> bytes:
        """Unseal through PolicyPCR + PolicyAuthorize (+ PolicyPCR, PolicyAuthValue) in a
        salted, response-encrypted policy session."""
        ticket = _unmarshal_exact(TPMT_TK_VERIFIED, approval.ticket, "verified ticket")
        with self._op(f"unseal authorized by {approval.selection}", policy=True) as scope:
            srk = self._srk(scope)
            handle = self._load(scope, srk, sealed.public, sealed.private)
            session = scope.loaded(
                self._ectx.start_auth_session(
                    srk,
                    ESYS_TR.NONE,
                    TPM2_SE.POLICY,
                    TPMT_SYM_DEF.parse("aes128cfb"),
                    TPM2_ALG.SHA256,
                )
            )
            self._ectx.trsess_set_attributes(
                session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT
            )
            self._ectx.policy_pcr(session, b"", _tss_selection(approval.selection))
            try:
                self._ectx.policy_authorize(
                    session,
                    TPM2B_DIGEST(approval.approved_policy),
                    TPM2B_NAME(approval.key_name),
                    ticket,
                    TPM2B_NONCE(approval.policy_ref),
                )
            except TSS2_Exception as exc:
                if exc.error not in (TPM2_RC.VALUE, TPM2_RC.TICKET, TPM2_RC.POLICY_FAIL):
                    raise
                rc = int(exc.rc)
                why = (
                    f"the PCR policy of {approval.selection} with the current values is not "
                    f"the approved policy {approval.approved_policy.hex()}"
                    if rc & 0x0F00 == 0x0100  # parameter 1: approvedPolicy
                    else "the ticket was not issued by this TPM for this approved policy and "
                    f"key {approval.key_name.hex()}"
                )
                raise PolicyError(f"TPM2_PolicyAuthorize refused (rc 0x{rc:03x}): {why}") from exc
            if selection is not None:
                self._ectx.policy_pcr(session, b"", _tss_selection(selection))
            if auth_value is not None:
                self._ectx.policy_auth_value(session)
                self._ectx.tr_set_auth(handle, auth_value)
            return bytes(self._ectx.unseal(handle, session1=session))

    # --- NV ---------------------------------------------------------------------------------
    def _define(self, index: int, kind: TPM2_NT, what: str) -> None:
        _check_nv_index(index)
        public = TPM2B_NV_PUBLIC(
            TPMS_NV_PUBLIC(
                nvIndex=index,
                nameAlg=TPM2_ALG.SHA256,
                dataSize=8,
                attributes=_NV_ATTRS | (kind << TPMA_NV.TPM2_NT_SHIFT),
            )
        )
        with self._op(f"NV_DefineSpace {what} 0x{index:08x}") as scope:
            handle = self._ectx.nv_define_space(None, public)
            scope.close.append(handle)
            # Initialise the index so it can be read at once: a counter starts at the
            # highest value any counter on this TPM has had; bits start at zero.
            if kind == TPM2_NT.COUNTER:
                self._ectx.nv_increment(handle, ESYS_TR.OWNER)
            else:
                self._ectx.nv_set_bits(handle, 0, ESYS_TR.OWNER)

    def _read8(self, index: int, what: str) -> int:
        with self._op(f"NV_Read {what} 0x{index:08x}") as scope:
            handle = self._nv(scope, index)
            data = bytes(self._ectx.nv_read(handle, 8, 0, ESYS_TR.OWNER))
        return int.from_bytes(data, "big")

    def nv_define_counter(self, index: int) -> None:
        """Define and initialise a TPM_NT_COUNTER (readable at once, never below any
        value a counter on this TPM has had)."""
        self._define(index, TPM2_NT.COUNTER, "counter")

    def nv_increment(self, index: int) -> int:
        """Increment a counter; returns the new value."""
        with self._op(f"NV_Increment 0x{index:08x}") as scope:
            handle = self._nv(scope, index)
            self._ectx.nv_increment(handle, ESYS_TR.OWNER)
        return self._read8(index, "counter")

    def nv_read_counter(self, index: int) -> int:
        """Current value of a counter."""
        return self._read8(index, "counter")

    def nv_define_bits(self, index: int) -> None:
        """Define a 64-bit TPM_NT_BITS index, initialised to zero."""
        self._define(index, TPM2_NT.BITS, "bits")

    def nv_set_bits(self, index: int, bits: int) -> None:
        """OR ``bits`` into the field (TPM2_NV_SetBits)."""
        if not 0 <= bits < 1 << 64:
            raise ConfigError(f"NV bits value {bits:#x} does not fit 64 bits")
        with self._op(f"NV_SetBits 0x{index:08x}") as scope:
            handle = self._nv(scope, index)
            self._ectx.nv_set_bits(handle, bits, ESYS_TR.OWNER)

    def nv_read_bits(self, index: int) -> int:
        """The bit field."""
        return self._read8(index, "bits")

    def nv_undefine(self, index: int) -> None:
        """Delete an NV index (owner authorisation)."""
        with self._op(f"NV_UndefineSpace 0x{index:08x}") as scope:
            handle = self._nv(scope, index)
            self._ectx.nv_undefine_space(handle, ESYS_TR.OWNER)
            scope.close.remove(handle)  # undefine invalidates the ESYS_TR

    # --- keys, quotes, credentials ------------------------------------------------------
    def ek_public(self) -> bytes:
        """TPM2B_PUBLIC of the RSA-2048 EK (TCG template L-1, or the TPM's NV template)."""
        if self._ek_public is None:
            with self._op("create EK") as scope:
                _handle, public = self._ek(scope)
                self._ek_public = bytes(public.marshal())
        return self._ek_public

    def ek_certificate(self) -> bytes | None:
        """The RSA-2048 EK certificate from NV 0x01c00002 (None when the index is absent)."""
        with self._op("read EK certificate"):
            cert, _template = create_ek_template("EK-RSA2048", NVReadEK(self._ectx))
        if not cert:
            return None
        return bytes(cert)

    def create_ak(self) -> TpmKey:
        """A restricted ECDSA P-256 attestation key under the storage primary."""
        return self._create(ak_template(), "create AK")

    def create_signing_key(self, algorithm: str = "ecc-p256") -> TpmKey:
        """A non-restricted signing key (``ecc-p256`` or ``rsa2048``) under the SRK."""
        return self._create(signing_key_template(algorithm), f"create {algorithm} key")

    def sign(self, key: TpmKey, digest: bytes) -> bytes:
        """TPM2_Sign a SHA-256 digest with the key's scheme; TPMT_SIGNATURE bytes."""
        if len(digest) != 32:
            raise FormatError(f"digest to sign is {len(digest)} bytes, expected 32 (SHA-256)")
        with self._op("sign") as scope:
            handle = self._load_key(scope, key)
            ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
            sig = self._ectx.sign(
                handle, TPM2B_DIGEST(digest), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket
            )
            return bytes(sig.marshal())

    def quote(self, ak: TpmKey, nonce: bytes, selection: PcrSelection) -> Attestation:
        """TPM2_Quote; attest bytes are TPMS_ATTEST (no TPM2B size)."""
        with self._op(f"quote {selection}") as scope:
            handle = self._load_key(scope, ak)
            attest, sig = self._ectx.quote(handle, _tss_selection(selection), TPM2B_DATA(nonce))
            return Attestation(attest=bytes(attest), signature=bytes(sig.marshal()))

    def certify(self, ak: TpmKey, key: TpmKey, nonce: bytes) -> Attestation:
        """TPM2_Certify ``key`` with ``ak``."""
        with self._op("certify") as scope:
            srk = self._srk(scope)
            ak_handle = self._load(scope, srk, ak.public, ak.private)
            key_handle = self._load(scope, srk, key.public, key.private)
            scope.drop(srk)
            attest, sig = self._ectx.certify(
                key_handle, ak_handle, TPM2B_DATA(nonce), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            )
            return Attestation(attest=bytes(attest), signature=bytes(sig.marshal()))

    def activate_credential(self, ak: TpmKey, credential_blob: bytes, secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the EK (PolicySecret(endorsement) session)."""
        blob = _unmarshal_exact(TPM2B_ID_OBJECT, credential_blob, "credential blob")
        enc = _unmarshal_exact(TPM2B_ENCRYPTED_SECRET, secret, "encrypted secret")
        with self._op("activate credential") as scope:
            ak_handle = self._load_key(scope, ak)
            ek_handle, _ = self._ek(scope)
            session = scope.loaded(
                self._ectx.start_auth_session(
                    ESYS_TR.NONE,
                    ESYS_TR.NONE,
                    TPM2_SE.POLICY,
                    TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                    TPM2_ALG.SHA256,
                )
            )
            self._ectx.policy_secret(ESYS_TR.ENDORSEMENT, session)
            cred = self._ectx.activate_credential(
                ak_handle, ek_handle, blob, enc, session1=ESYS_TR.PASSWORD, session2=session
            )
            return bytes(cred)

    def get_random(self, size: int) -> bytes:
        """``size`` bytes from TPM2_GetRandom (several calls when needed)."""
        if size < 0:
            raise ConfigError(f"random size {size} is negative")
        out = b""
        with self._op("GetRandom"):
            while len(out) < size:
                chunk = bytes(self._ectx.get_random(min(_RANDOM_CHUNK, size - len(out))))
                if not chunk:
                    raise TpmError("TPM GetRandom returned no bytes")
                out += chunk
        return out

    def close(self) -> None:
        """Close the ESAPI context (and the TCTI connection)."""
        ectx = self._ectx
        if ectx is not None:
            self._ectx = None
            ectx.close()


def _selected_indexes(selection: TPML_PCR_SELECTION, bank: HashAlg) -> list[int]:
    """PCR indexes set in the response selection for ``bank``, ascending."""
    out: list[int] = []
    for sel in selection:
        if int(sel.hash) != bank.alg_id:
            continue
        mask = bytes(sel.pcrSelect)[: sel.sizeofSelect]
        out.extend(i for i in range(len(mask) * 8) if mask[i // 8] & (1 << (i % 8)))
    return out


def _check_nv_index(index: int) -> None:
    if not NV_INDEX_FIRST <= index <= NV_INDEX_LAST:
        raise ConfigError(
            f"NV index 0x{index:x} is outside 0x{NV_INDEX_FIRST:08x}..0x{NV_INDEX_LAST:08x}"
        )


def _check_secret(secret: bytes, auth_value: bytes | None) -> None:
    if not 0 < len(secret) <= limits.TPM_MAX_SEALED_SIZE:
        raise ConfigError(
            f"sealed secret is {len(secret)} bytes, expected 1..{limits.TPM_MAX_SEALED_SIZE}"
        )
    if auth_value is not None and len(auth_value) > limits.TPM_MAX_AUTH_VALUE:
        raise ConfigError(
            f"auth value is {len(auth_value)} bytes, at most {limits.TPM_MAX_AUTH_VALUE}"
        )
