"""The one TPM contract: the same assertions over every backend (software, tss/swtpm).

Each test gets a fresh TPM of each kind through the ``tpm_rig`` / ``tpm_backend``
fixtures (tests/conftest.py). What a backend returns is judged by the independent
reader in ``_oracle.py`` (TPM 2.0 Part 2 by hand + ``cryptography``), never by the
backend itself.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.exceptions import InvalidSignature
from tests.conftest import need_module

from bastion.errors import (
    BastionError,
    ConflictError,
    DigestMismatchError,
    FormatError,
    NotFoundError,
    PolicyError,
    SignatureError,
    TpmError,
)
from bastion.tpm.base import HashAlg, PcrSelection, SealedObject, Tpm, TpmKey
from bastion.tpm.quote import make_credential as bastion_make_credential
from bastion.tpm.quote import verify_certify, verify_quote

from . import _oracle as oracle

SEL = PcrSelection.parse("sha256:7,23")
NV = 0x01500100


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def extend(tpm: Tpm, index: int, data: bytes) -> bytes:
    tpm.pcr_extend(index, {HashAlg.SHA256: sha(data)})
    return sha(data)


def pytss_make_credential(ek_public: bytes, name: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """Server side of activation by tpm2-pytss: an implementation independent of bastion."""
    need_module("tpm2_pytss", "'bastion[tpm]' (needs Debian libtss2-dev, pkg-config)")
    from tpm2_pytss.types import TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential as pytss_make

    pub, _ = TPM2B_PUBLIC.unmarshal(ek_public)
    blob, enc = pytss_make(pub, secret, name)
    return bytes(blob.marshal()), bytes(enc.marshal())


MAKERS = {"bastion": bastion_make_credential, "pytss": pytss_make_credential}
make_credential = bastion_make_credential


# --- the object implements the protocol --------------------------------------------------


def test_is_a_tpm(tpm_backend: Tpm) -> None:
    assert isinstance(tpm_backend, Tpm)


# --- PCRs ---------------------------------------------------------------------------------


def test_pcrs_after_startup(tpm_backend: Tpm) -> None:
    values = tpm_backend.pcr_read(PcrSelection(HashAlg.SHA256, tuple(range(24))))
    assert sorted(values) == list(range(24))
    for i, value in values.items():
        # PC Client: PCRs 17-22 (DRTM) start at all ones, the others at zero
        assert value == (b"\xff" * 32 if 17 <= i <= 22 else bytes(32)), i


def test_pcr_extend_is_hash_chain(tpm_backend: Tpm) -> None:
    expected = bytes(32)
    for data in (b"one", b"two", b"three"):
        expected = sha(expected + extend(tpm_backend, 23, data))
    assert tpm_backend.pcr_read(PcrSelection.parse("sha256:23")) == {23: expected}
    assert tpm_backend.pcr_read(PcrSelection.parse("sha256:16"))[16] == bytes(32)


@pytest.mark.parametrize("size", [0, 20, 31, 33, 64])
def test_pcr_extend_wrong_digest_size_refused(tpm_backend: Tpm, size: int) -> None:
    with pytest.raises(FormatError):
        tpm_backend.pcr_extend(23, {HashAlg.SHA256: b"\x01" * size})
    assert tpm_backend.pcr_read(PcrSelection.parse("sha256:23"))[23] == bytes(32)


# --- sealing ------------------------------------------------------------------------------


def test_seal_unseal_roundtrip(tpm_backend: Tpm) -> None:
    extend(tpm_backend, 7, b"secure boot state")
    secret = os.urandom(64)
    sealed = tpm_backend.seal(secret, SEL)
    assert tpm_backend.unseal(sealed, SEL) == secret
    # the blob is the systemd tpm2-blob layout: TPM2B_PRIVATE || TPM2B_PUBLIC
    assert sealed.blob == sealed.private + sealed.public
    pub = oracle.parse_public(sealed.public)
    assert pub.type == oracle.ALG_KEYEDHASH and len(pub.auth_policy) == 32
    assert secret not in sealed.blob


def test_unseal_refused_after_extend(tpm_backend: Tpm) -> None:
    sealed = tpm_backend.seal(b"disk key", SEL)
    extend(tpm_backend, 23, b"something else booted")
    with pytest.raises(PolicyError):
        tpm_backend.unseal(sealed, SEL)


def test_unseal_with_other_selection_refused(tpm_backend: Tpm) -> None:
    sealed = tpm_backend.seal(b"disk key", SEL)
    with pytest.raises(PolicyError):
        tpm_backend.unseal(sealed, PcrSelection.parse("sha256:7"))


def test_seal_to_future_pcr_values(tpm_backend: Tpm) -> None:
    future = sha(bytes(32) + sha(b"next kernel"))
    sealed = tpm_backend.seal(b"k", SEL, pcr_values={7: bytes(32), 23: future})
    with pytest.raises(PolicyError):
        tpm_backend.unseal(sealed, SEL)
    extend(tpm_backend, 23, b"next kernel")
    assert tpm_backend.unseal(sealed, SEL) == b"k"


def test_same_policy_digest_for_current_and_explicit_values(tpm_backend: Tpm) -> None:
    extend(tpm_backend, 7, b"x")
    current = tpm_backend.pcr_read(SEL)
    a = oracle.parse_public(tpm_backend.seal(b"k", SEL).public).auth_policy
    b = oracle.parse_public(tpm_backend.seal(b"k", SEL, pcr_values=current).public).auth_policy
    assert a == b


@pytest.mark.parametrize(
    ("sealed_auth", "given_auth"),
    [(b"1234", b"1235"), (b"1234", None), (None, b"1234"), (b"pin", b"")],
    ids=["wrong-pin", "missing-pin", "unexpected-pin", "empty-pin"],
)
def test_auth_value_mismatch_refused(
    tpm_backend: Tpm, sealed_auth: bytes | None, given_auth: bytes | None
) -> None:
    sealed = tpm_backend.seal(b"k", SEL, auth_value=sealed_auth)
    with pytest.raises(PolicyError):
        tpm_backend.unseal(sealed, SEL, auth_value=given_auth)


def test_auth_value_accepted(tpm_backend: Tpm) -> None:
    sealed = tpm_backend.seal(b"k" * 32, SEL, auth_value=sha(b"1234"))
    assert tpm_backend.unseal(sealed, SEL, auth_value=sha(b"1234")) == b"k" * 32


def test_auth_and_pcr_policy_differ(tpm_backend: Tpm) -> None:
    plain = oracle.parse_public(tpm_backend.seal(b"k", SEL).public).auth_policy
    pinned = oracle.parse_public(tpm_backend.seal(b"k", SEL, auth_value=b"p").public).auth_policy
    assert plain != pinned


@pytest.mark.parametrize("where", ["private", "public"])
def test_tampered_sealed_object_refused(tpm_backend: Tpm, where: str) -> None:
    sealed = tpm_backend.seal(b"k", SEL)
    blob = bytearray(getattr(sealed, where))
    blob[len(blob) // 2] ^= 0x01
    bad = (
        SealedObject(public=sealed.public, private=bytes(blob))
        if where == "private"
        else SealedObject(public=bytes(blob), private=sealed.private)
    )
    with pytest.raises(BastionError):
        tpm_backend.unseal(bad, SEL)


def test_truncated_sealed_object_refused(tpm_backend: Tpm) -> None:
    sealed = tpm_backend.seal(b"k", SEL)
    with pytest.raises((FormatError, TpmError)):
        tpm_backend.unseal(SealedObject(public=sealed.public[:-3], private=sealed.private), SEL)


# --- NV counters and bits -------------------------------------------------------------------


def test_counter_monotonic_across_undefine(tpm_backend: Tpm) -> None:
    tpm_backend.nv_define_counter(NV)
    start = tpm_backend.nv_read_counter(NV)
    assert tpm_backend.nv_increment(NV) == start + 1
    assert tpm_backend.nv_increment(NV) == start + 2
    assert tpm_backend.nv_read_counter(NV) == start + 2
    tpm_backend.nv_undefine(NV)
    with pytest.raises(NotFoundError):
        tpm_backend.nv_read_counter(NV)
    tpm_backend.nv_define_counter(NV)
    assert tpm_backend.nv_read_counter(NV) >= start + 2
    # another index never starts below the highest value any counter has had
    tpm_backend.nv_define_counter(NV + 1)
    assert tpm_backend.nv_read_counter(NV + 1) >= start + 2


def test_nv_define_twice_conflicts(tpm_backend: Tpm) -> None:
    tpm_backend.nv_define_counter(NV)
    with pytest.raises(ConflictError):
        tpm_backend.nv_define_counter(NV)
    with pytest.raises(ConflictError):
        tpm_backend.nv_define_bits(NV)


@pytest.mark.parametrize(
    "op",
    ["nv_read_counter", "nv_increment", "nv_read_bits", "nv_undefine"],
)
def test_nv_undefined_index_not_found(tpm_backend: Tpm, op: str) -> None:
    with pytest.raises(NotFoundError):
        getattr(tpm_backend, op)(NV + 7)


def test_nv_set_bits_undefined_not_found(tpm_backend: Tpm) -> None:
    with pytest.raises(NotFoundError):
        tpm_backend.nv_set_bits(NV + 7, 1)


def test_bits_only_ever_or(tpm_backend: Tpm) -> None:
    tpm_backend.nv_define_bits(NV)
    assert tpm_backend.nv_read_bits(NV) == 0
    tpm_backend.nv_set_bits(NV, 0b101)
    assert tpm_backend.nv_read_bits(NV) == 0b101
    tpm_backend.nv_set_bits(NV, 0b010)
    tpm_backend.nv_set_bits(NV, 0)
    assert tpm_backend.nv_read_bits(NV) == 0b111
    tpm_backend.nv_set_bits(NV, 1 << 63)
    assert tpm_backend.nv_read_bits(NV) == (1 << 63) | 0b111


# --- power cycle ----------------------------------------------------------------------------


def test_power_cycle_resets_pcrs_keeps_nv_and_keys(tpm_rig) -> None:  # type: ignore[no-untyped-def]
    tpm = tpm_rig.tpm
    extend(tpm, 23, b"boot 1")
    sealed = tpm.seal(b"disk key", SEL)
    ak = tpm.create_ak()
    ek = tpm.ek_public()
    tpm.nv_define_counter(NV)
    count = tpm.nv_increment(NV)
    tpm.nv_define_bits(NV + 1)
    tpm.nv_set_bits(NV + 1, 0x8001)

    tpm = tpm_rig.power_cycle()
    assert tpm.pcr_read(SEL) == {7: bytes(32), 23: bytes(32)}
    assert tpm.nv_read_counter(NV) == count
    assert tpm.nv_read_bits(NV + 1) == 0x8001
    assert tpm.ek_public() == ek
    with pytest.raises(PolicyError):
        tpm.unseal(sealed, SEL)
    extend(tpm, 23, b"boot 1")
    assert tpm.unseal(sealed, SEL) == b"disk key"
    quote = tpm.quote(ak, b"n", SEL)
    oracle.verify_signature(ak.public, quote.attest, quote.signature)


# --- keys, quotes, certify ------------------------------------------------------------------


def test_key_name_is_name_alg_and_hash(tpm_backend: Tpm) -> None:
    ak = tpm_backend.create_ak()
    pub = oracle.parse_public(ak.public)
    assert ak.name == pub.name
    assert pub.type == oracle.ALG_ECC
    restricted, sign, fixed_tpm = 1 << 16, 1 << 18, 1 << 1
    assert pub.attributes & restricted and pub.attributes & sign and pub.attributes & fixed_tpm


def test_quote_verifies(tpm_backend: Tpm) -> None:
    extend(tpm_backend, 7, b"shim")
    ak = tpm_backend.create_ak()
    nonce = os.urandom(20)
    quote = tpm_backend.quote(ak, nonce, SEL)
    oracle.verify_signature(ak.public, quote.attest, quote.signature)
    body = oracle.parse_attest(quote.attest)
    assert body.type == oracle.ST_ATTEST_QUOTE
    assert body.extra_data == nonce
    assert body.selection == [(oracle.ALG_SHA256, bytes([0x80, 0x00, 0x80]))]
    values = tpm_backend.pcr_read(SEL)
    assert body.pcr_digest == sha(values[7] + values[23])
    verify_quote(quote.attest, quote.signature, ak.public, nonce, SEL, values)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("wrong-nonce", DigestMismatchError),
        ("tampered-attest", SignatureError),
        ("wrong-ak", SignatureError),
        ("wrong-pcr-values", DigestMismatchError),
        ("other-selection", DigestMismatchError),
        ("truncated-signature", FormatError),
    ],
)
def test_verify_quote_negative(tpm_backend: Tpm, case: str, error: type[Exception]) -> None:
    ak = tpm_backend.create_ak()
    quote = tpm_backend.quote(ak, b"nonce-1", SEL)
    values = tpm_backend.pcr_read(SEL)
    attest, sig, key, nonce, sel = quote.attest, quote.signature, ak.public, b"nonce-1", SEL
    if case == "wrong-nonce":
        nonce = b"nonce-2"
    elif case == "tampered-attest":
        attest = attest[:-1] + bytes([attest[-1] ^ 1])
    elif case == "wrong-ak":
        key = tpm_backend.create_ak().public
    elif case == "wrong-pcr-values":
        values = {**values, 23: sha(b"evil")}
    elif case == "other-selection":
        sel = PcrSelection.parse("sha256:7")
        values = {7: values[7]}
    else:
        sig = sig[:-4]
    verify_quote(
        quote.attest, quote.signature, ak.public, b"nonce-1", SEL, tpm_backend.pcr_read(SEL)
    )
    with pytest.raises(error):
        verify_quote(attest, sig, key, nonce, sel, values)


@pytest.mark.parametrize("case", ["flipped-attest", "other-ak", "flipped-sig"])
def test_quote_negative(tpm_backend: Tpm, case: str) -> None:
    ak = tpm_backend.create_ak()
    quote = tpm_backend.quote(ak, b"nonce", SEL)
    attest, sig, key = bytearray(quote.attest), bytearray(quote.signature), ak
    if case == "flipped-attest":
        attest[-1] ^= 1
    elif case == "flipped-sig":
        sig[-1] ^= 1
    else:
        key = tpm_backend.create_ak()
    with pytest.raises(InvalidSignature):
        oracle.verify_signature(key.public, bytes(attest), bytes(sig))


def test_certify(tpm_backend: Tpm) -> None:
    ak = tpm_backend.create_ak()
    key = tpm_backend.create_signing_key()
    att = tpm_backend.certify(ak, key, b"challenge")
    oracle.verify_signature(ak.public, att.attest, att.signature)
    body = oracle.parse_attest(att.attest)
    assert body.type == oracle.ST_ATTEST_CERTIFY
    assert body.extra_data == b"challenge"
    assert body.name == key.name
    verify_certify(att.attest, att.signature, ak.public, b"challenge", key.public)
    other = tpm_backend.create_signing_key()
    with pytest.raises(DigestMismatchError):
        verify_certify(att.attest, att.signature, ak.public, b"challenge", other.public)


@pytest.mark.parametrize("algorithm", ["ecc-p256", "rsa2048"])
def test_signing_key(tpm_backend: Tpm, algorithm: str) -> None:
    key = tpm_backend.create_signing_key(algorithm)
    pub = oracle.parse_public(key.public)
    assert pub.type == (oracle.ALG_ECC if algorithm == "ecc-p256" else oracle.ALG_RSA)
    assert pub.attributes & (1 << 16) == 0  # not restricted
    assert pub.attributes & (1 << 1)  # fixedTPM: never leaves the TPM
    digest = sha(b"message")
    sig = tpm_backend.sign(key, digest)
    oracle.verify_digest_signature(key.public, digest, sig)
    with pytest.raises(InvalidSignature):
        oracle.verify_digest_signature(key.public, sha(b"other"), sig)


def test_restricted_ak_does_not_sign_arbitrary_digests(tpm_backend: Tpm) -> None:
    ak = tpm_backend.create_ak()
    with pytest.raises(TpmError):
        tpm_backend.sign(ak, sha(b"forged attestation"))


def test_keys_are_bound_to_their_tpm(tpm_rig, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import TpmRig

    key = tpm_rig.tpm.create_signing_key()
    sealed = tpm_rig.tpm.seal(b"disk key", SEL)
    ak = tpm_rig.tpm.create_ak()
    other = TpmRig(tpm_rig.kind, tmp_path / "other")
    try:
        with pytest.raises(BastionError):
            other.tpm.sign(key, sha(b"m"))
        with pytest.raises(BastionError):
            other.tpm.unseal(sealed, SEL)
        with pytest.raises(BastionError):
            other.tpm.quote(ak, b"n", SEL)
        assert other.tpm.ek_public() != tpm_rig.tpm.ek_public()
    finally:
        other.close()


# --- EK and credential activation -----------------------------------------------------------


def test_ek_is_tcg_rsa2048(tpm_backend: Tpm) -> None:
    ek = oracle.parse_public(tpm_backend.ek_public())
    assert ek.type == oracle.ALG_RSA
    assert ek.key is not None and ek.key.key_size == 2048  # type: ignore[union-attr]
    # TCG EK Credential Profile: PolicySecret(TPM_RH_ENDORSEMENT)
    assert ek.auth_policy.hex() == (
        "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
    )
    assert tpm_backend.ek_public() == tpm_backend.ek_public()


@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_activate_credential(tpm_backend: Tpm, maker: str) -> None:
    ak = tpm_backend.create_ak()
    blob, secret = MAKERS[maker](tpm_backend.ek_public(), ak.name, b"challenge-0123456789")
    assert tpm_backend.activate_credential(ak, blob, secret) == b"challenge-0123456789"


def test_credential_for_other_ek_refused(tpm_backend: Tpm) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    ak = tpm_backend.create_ak()
    ek = tpm_backend.ek_public()
    modulus = rsa.generate_private_key(65537, 2048).public_key().public_numbers().n
    other_ek = ek[:-256] + modulus.to_bytes(256, "big")
    blob, secret = make_credential(other_ek, ak.name, b"challenge")
    with pytest.raises(TpmError):
        tpm_backend.activate_credential(ak, blob, secret)


def test_credential_for_other_ak_refused(tpm_backend: Tpm) -> None:
    ak = tpm_backend.create_ak()
    other = tpm_backend.create_ak()
    blob, secret = make_credential(tpm_backend.ek_public(), other.name, b"challenge")
    with pytest.raises(TpmError):
        tpm_backend.activate_credential(ak, blob, secret)


def test_tampered_credential_refused(tpm_backend: Tpm) -> None:
    ak = tpm_backend.create_ak()
    blob, secret = make_credential(tpm_backend.ek_public(), ak.name, b"challenge")
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(BastionError):
        tpm_backend.activate_credential(ak, bytes(bad), secret)


def test_credential_needs_a_real_key(tpm_backend: Tpm) -> None:
    ak = tpm_backend.create_ak()
    bogus = TpmKey(public=ak.public, private=b"\x00\x04abcd", name=ak.name)
    blob, secret = make_credential(tpm_backend.ek_public(), ak.name, b"challenge")
    with pytest.raises(BastionError):
        tpm_backend.activate_credential(bogus, blob, secret)


# --- random -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 32, 33, 200])
def test_get_random(tpm_backend: Tpm, size: int) -> None:
    data = tpm_backend.get_random(size)
    assert len(data) == size
    if size >= 16:
        assert data != tpm_backend.get_random(size)


def test_ek_certificate_absent_without_a_maker(tpm_backend: Tpm) -> None:
    """Neither the software TPM nor a bare swtpm has an EK certificate in NV (a maker's
    certificate, from swtpm_setup --create-ek-cert, is tested in
    tests/integration/server/test_enrollment.py)."""
    assert tpm_backend.ek_certificate() is None


# --- signed policies: LoadExternal, VerifySignature, PolicyAuthorize -------------------------

PCR11 = PcrSelection.parse("sha256:11")
_KEYS: dict[str, object] = {}


def authority(kind: str = "rsa"):  # type: ignore[no-untyped-def]
    """One RSA-2048 (systemd-measure's kind) or P-256 key per test session."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if kind not in _KEYS:
        _KEYS[kind] = (
            rsa.generate_private_key(65537, 2048)
            if kind.startswith("rsa")
            else ec.generate_private_key(ec.SECP256R1())
        )
    return _KEYS[kind]


def sign_raw(key, digest: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """A TPMT_SIGNATURE over a SHA-256 ``digest`` by ``key`` (cryptography, not bastion)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    from bastion.tpm import external

    pre = utils.Prehashed(hashes.SHA256())
    if isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(digest, padding.PKCS1v15(), pre)
    else:
        raw = key.sign(digest, ec.ECDSA(pre))
    return external.signature(key.public_key(), raw)


def approve(tpm: Tpm, key, selection: PcrSelection = PCR11, values=None):  # type: ignore[no-untyped-def]
    """The authority signs the PolicyPCR digest of ``values`` (default: current PCRs); the
    TPM verifies it: a PolicyApproval, as a device assembles it from a .pcrsig."""
    from bastion.tpm import external, pcr
    from bastion.tpm.base import PolicyApproval

    public = external.external_public(key.public_key()).to_bytes()
    approved = pcr.policy_pcr(selection, values or tpm.pcr_read(selection))
    ticket = tpm.verify_signature(
        public, pcr.authorize_digest(approved), sign_raw(key, sha_of(approved))
    )
    return PolicyApproval(tpm.load_external(public), selection, approved, ticket)


def sha_of(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def seal_signed(tpm: Tpm, key, **kw):  # type: ignore[no-untyped-def]
    from bastion.tpm import external, pcr

    name = oracle.parse_public(external.external_public(key.public_key()).to_bytes()).name
    auth = kw.pop("auth_value", None)
    policy = pcr.authorized_sealing_policy(name, with_auth_value=auth is not None, **kw)
    return tpm.seal_to_policy(b"disk key", policy, auth_value=auth)


@pytest.mark.parametrize("kind", ["rsa", "rsa-exponent-0", "ecc"])
def test_load_external_name(tpm_backend: Tpm, kind: str) -> None:
    from bastion.tpm import external

    key = authority("rsa" if kind.startswith("rsa") else kind).public_key()
    public = external.external_public(key, explicit_exponent=kind != "rsa-exponent-0")
    name = tpm_backend.load_external(public.to_bytes())
    assert name == oracle.parse_public(public.to_bytes()).name
    if kind == "rsa":  # systemd 252 writes the exponent out: attrs 0x00060040, e = 65537
        assert public.to_tpmt()[:8] == bytes.fromhex("0001000b00060040")


def test_policy_authorize_digest_is_spec_formula() -> None:
    """PolicyAuthorize = H(H(0^32 || TPM_CC_PolicyAuthorize || keyName) || policyRef)."""
    from bastion.tpm import pcr

    name = b"\x00\x0b" + sha(b"key")
    inner = sha(bytes(32) + (0x16A).to_bytes(4, "big") + name)
    assert pcr.policy_authorize(name) == sha(inner)
    assert pcr.policy_authorize(name, b"ref") == sha(inner + b"ref")
    # PolicyAuthorize replaces the digest so far: the literal PCR part comes after it
    values = {7: bytes(32)}
    sel7 = PcrSelection.parse("sha256:7")
    assert pcr.authorized_sealing_policy(name, selection=sel7, values=values) == pcr.policy_pcr(
        sel7, values, sha(inner)
    )


@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_signed_policy_unseals(tpm_backend: Tpm, kind: str) -> None:
    key = authority(kind)
    extend(tpm_backend, 11, b"uki sections")
    sealed = seal_signed(tpm_backend, key)
    assert tpm_backend.unseal_authorized(sealed, approve(tpm_backend, key)) == b"disk key"
    # an update: PCR 11 changes, the authority signs the new value, the object is unchanged
    extend(tpm_backend, 11, b"next release")
    assert tpm_backend.unseal_authorized(sealed, approve(tpm_backend, key)) == b"disk key"


def test_signed_policy_with_literal_pcrs_and_auth_value(tpm_backend: Tpm) -> None:
    key = authority()
    sel7 = PcrSelection.parse("sha256:7")
    extend(tpm_backend, 7, b"secure boot db")
    sealed = seal_signed(
        tpm_backend, key, selection=sel7, values=tpm_backend.pcr_read(sel7), auth_value=b"1234"
    )
    approval = approve(tpm_backend, key)
    assert (
        tpm_backend.unseal_authorized(sealed, approval, selection=sel7, auth_value=b"1234")
        == b"disk key"
    )
    for kw in (
        {"selection": sel7},
        {"auth_value": b"1234"},
        {"selection": sel7, "auth_value": b"1"},
    ):
        with pytest.raises(PolicyError):
            tpm_backend.unseal_authorized(sealed, approval, **kw)  # type: ignore[arg-type]
    extend(tpm_backend, 7, b"evil db")
    with pytest.raises(PolicyError):
        tpm_backend.unseal_authorized(sealed, approval, selection=sel7, auth_value=b"1234")


@pytest.mark.parametrize(
    "case", ["flipped-signature", "other-digest", "other-key", "ecdsa-with-rsa-key"]
)
def test_verify_signature_negative(tpm_backend: Tpm, case: str) -> None:
    from bastion.tpm import external

    key = authority()
    public = external.external_public(key.public_key()).to_bytes()
    digest = sha(b"approved policy")
    sig = sign_raw(key, digest)
    error: type[Exception] = SignatureError
    if case == "flipped-signature":
        sig = sig[:-1] + bytes([sig[-1] ^ 1])
    elif case == "other-digest":
        digest = sha(b"another policy")
    elif case == "other-key":
        sig = sign_raw(authority("rsa-other"), digest)
    else:
        sig, error = sign_raw(authority("ecc"), digest), TpmError
    with pytest.raises(error):
        tpm_backend.verify_signature(public, digest, sig)
    assert len(tpm_backend.verify_signature(public, digest, sign_raw(key, digest))) > 6


@pytest.mark.parametrize(
    "case",
    [
        "stale-pcr",
        "flipped-ticket",
        "null-ticket",
        "ticket-for-other-policy",
        "other-key-name",
        "sealed-to-other-key",
        "other-policy-ref",
    ],
)
def test_unseal_authorized_negative(tpm_backend: Tpm, case: str) -> None:
    """Every way the approval can be wrong: the TPM refuses (PolicyError), fail closed."""
    from dataclasses import replace

    from bastion.formats.tpm2 import VerifiedTicket
    from bastion.tpm import pcr

    key = authority()
    sealed = seal_signed(tpm_backend, key)
    approval = approve(tpm_backend, key)
    if case == "stale-pcr":
        extend(tpm_backend, 11, b"phase change")
    elif case == "flipped-ticket":
        approval = replace(approval, ticket=approval.ticket[:-1] + bytes([approval.ticket[-1] ^ 1]))
    elif case == "null-ticket":
        approval = replace(approval, ticket=VerifiedTicket(pcr.TPM_RH_NULL, b"").to_bytes())
    elif case == "ticket-for-other-policy":
        other = approve(tpm_backend, key, values={11: sha(b"other image")})
        approval = replace(approval, ticket=other.ticket)
    elif case == "other-key-name":
        other = approve(tpm_backend, authority("rsa-other"))
        approval = replace(approval, key_name=other.key_name)
    elif case == "sealed-to-other-key":
        sealed = seal_signed(tpm_backend, authority("rsa-other"))
    else:
        approval = replace(approval, policy_ref=b"other")
    with pytest.raises(PolicyError):
        tpm_backend.unseal_authorized(sealed, approval)


def test_ticket_survives_power_cycle(tpm_rig) -> None:  # type: ignore[no-untyped-def]
    """A ticket is an HMAC under the owner proof: valid across resets, on this TPM only."""
    key = authority()
    sealed = seal_signed(tpm_rig.tpm, key)
    approval = approve(tpm_rig.tpm, key)
    tpm = tpm_rig.power_cycle()
    assert tpm.unseal_authorized(sealed, approval) == b"disk key"


def test_ticket_from_another_tpm_refused(tpm_rig, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The other TPM checks the same signature but its ticket is under its own proof."""
    from dataclasses import replace

    from tests.conftest import TpmRig

    key = authority()
    sealed = seal_signed(tpm_rig.tpm, key)
    approval = approve(tpm_rig.tpm, key)
    other = TpmRig(tpm_rig.kind, tmp_path / "other")
    try:
        foreign = approve(other.tpm, key)
        assert foreign.approved_policy == approval.approved_policy
        with pytest.raises(PolicyError):
            tpm_rig.tpm.unseal_authorized(sealed, replace(approval, ticket=foreign.ticket))
    finally:
        other.close()


@pytest.mark.parametrize("what", ["public", "signature", "ticket"])
def test_malformed_inputs_refused(tpm_backend: Tpm, what: str) -> None:
    from dataclasses import replace

    from bastion.tpm import external

    key = authority()
    public = external.external_public(key.public_key()).to_bytes()
    digest = sha(b"approved")
    sig = sign_raw(key, digest)
    if what == "public":
        with pytest.raises((FormatError, TpmError)):
            tpm_backend.load_external(public[:-7])
    elif what == "signature":
        with pytest.raises((FormatError, TpmError)):
            tpm_backend.verify_signature(public, digest, sig[:-7])
    else:
        sealed = seal_signed(tpm_backend, key)
        approval = approve(tpm_backend, key)
        with pytest.raises((FormatError, PolicyError)):
            tpm_backend.unseal_authorized(sealed, replace(approval, ticket=approval.ticket[:-3]))
