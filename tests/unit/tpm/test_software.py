"""SoftwareTpm: every Tpm method, persistence, power cycles and the negative tables."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from bastion.errors import (
    ConfigError,
    ConflictError,
    FormatError,
    NotFoundError,
    PolicyError,
    TpmError,
)
from bastion.formats.tpm2 import (
    Alg,
    Attest,
    CertifyInfo,
    KeyedHashParms,
    ObjectAttr,
    Public,
    RsaParms,
    Scheme,
    Signature,
    SymDef,
)
from bastion.io.clock import FixedClock
from bastion.tpm.base import HashAlg, PcrSelection, SealedObject, Tpm, TpmKey
from bastion.tpm.pcr import EK_POLICY, extend, reset_value, sealing_policy
from bastion.tpm.quote import make_credential, public_key, verify_certify, verify_quote
from bastion.tpm.software import SoftwareTpm

SEL = PcrSelection.parse("sha256:0,7,23")
D1 = hashlib.sha256(b"one").digest()
D2 = hashlib.sha256(b"two").digest()
CTR = 0x01500016
BITS = 0x01500020


@pytest.fixture
def tpm(tmp_path: Path) -> SoftwareTpm:
    return SoftwareTpm(tmp_path / "tpm" / "state.json")


@pytest.fixture(scope="module")
def ek_tpm(tmp_path_factory: pytest.TempPathFactory) -> SoftwareTpm:
    """One TPM with its (slow to generate) EK, shared by the credential tests."""
    t = SoftwareTpm(tmp_path_factory.mktemp("ek") / "state.json")
    t.ek_public()
    return t


def test_is_a_tpm(tpm: SoftwareTpm) -> None:
    assert isinstance(tpm, Tpm)
    assert len(tpm.get_random(48)) == 48 and tpm.get_random(0) == b""
    with pytest.raises(ConfigError):
        tpm.get_random(-1)
    with tpm as same:
        assert same is tpm


# --- PCRs -----------------------------------------------------------------------------------


def test_pcrs_start_at_reset_values(tpm: SoftwareTpm) -> None:
    values = tpm.pcr_read(PcrSelection.parse("sha256:0,16,17,22,23"))
    assert values == {i: reset_value(i) for i in (0, 16, 17, 22, 23)}
    assert values[17] == b"\xff" * 32
    assert tpm.pcr_read(PcrSelection.parse("sha1:7")) == {7: bytes(20)}


def test_extend_persists_across_instances_and_power_cycle_resets(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    a = SoftwareTpm(path)
    a.pcr_extend(23, {HashAlg.SHA256: D1, HashAlg.SHA1: D1[:20]})
    b = SoftwareTpm(path)  # another "process"
    assert b.pcr_read(PcrSelection.parse("sha256:23"))[23] == extend(bytes(32), D1)
    assert b.pcr_read(PcrSelection.parse("sha1:23"))[23] == extend(bytes(20), D1[:20], HashAlg.SHA1)
    b.nv_define_counter(CTR)
    b.nv_increment(CTR)
    b.power_cycle()
    assert a.pcr_read(SEL) == {0: bytes(32), 7: bytes(32), 23: bytes(32)}
    assert a.nv_read_counter(CTR) == 2  # 1 at definition, then one increment


@pytest.mark.parametrize(
    ("case", "index", "digests", "error"),
    [
        ("index too big", 24, {HashAlg.SHA256: D1}, ConfigError),
        ("negative index", -1, {HashAlg.SHA256: D1}, ConfigError),
        ("no digest", 1, {}, ConfigError),
        ("short digest", 1, {HashAlg.SHA256: D1[:31]}, FormatError),
        ("sha1 digest in sha256 bank", 1, {HashAlg.SHA256: D1[:20]}, FormatError),
        ("unallocated bank", 1, {HashAlg.SHA384: bytes(48)}, TpmError),
    ],
)
def test_bad_extend_is_refused(
    tpm: SoftwareTpm, case: str, index: int, digests: dict, error: type[Exception]
) -> None:
    with pytest.raises(error):
        tpm.pcr_extend(index, digests)
    assert tpm.pcr_read(PcrSelection.parse("sha256:1,23")) == {1: bytes(32), 23: bytes(32)}


def test_unallocated_bank_read(tpm: SoftwareTpm) -> None:
    with pytest.raises(TpmError):
        tpm.pcr_read(PcrSelection.parse("sha384:0"))


# --- sealing --------------------------------------------------------------------------------


def test_seal_public_area_is_a_real_sealed_object(tpm: SoftwareTpm) -> None:
    tpm.pcr_extend(7, {HashAlg.SHA256: D1})
    sealed = tpm.seal(b"k" * 32, SEL)
    pub = Public.parse(sealed.public)
    assert len(sealed.public) == 80  # what systemd-cryptenroll stores
    assert (pub.type, pub.name_alg, pub.attributes) == (Alg.KEYEDHASH, Alg.SHA256, 0x12)
    assert pub.parameters == KeyedHashParms(Scheme())
    assert pub.auth_policy == sealing_policy(SEL, tpm.pcr_read(SEL))
    assert sealed.blob == sealed.private + sealed.public
    assert tpm.unseal(sealed, SEL) == b"k" * 32


def test_seal_to_future_pcr_values(tpm: SoftwareTpm) -> None:
    future = {0: bytes(32), 7: bytes(32), 23: extend(bytes(32), D1)}
    sealed = tpm.seal(b"later", SEL, pcr_values=future)
    with pytest.raises(PolicyError):
        tpm.unseal(sealed, SEL)
    tpm.pcr_extend(23, {HashAlg.SHA256: D1})
    assert tpm.unseal(sealed, SEL) == b"later"
    with pytest.raises(ConfigError):
        tpm.seal(b"x", SEL, pcr_values={0: bytes(32)})


def test_auth_value(tpm: SoftwareTpm) -> None:
    sealed = tpm.seal(b"pin-protected", SEL, auth_value=b"1234")
    pub = Public.parse(sealed.public)
    assert pub.auth_policy == sealing_policy(SEL, tpm.pcr_read(SEL), with_auth_value=True)
    assert tpm.unseal(sealed, SEL, auth_value=b"1234") == b"pin-protected"
    assert tpm.unseal(sealed, SEL, auth_value=b"1234\0\0") == b"pin-protected"  # TPM trims
    with pytest.raises(PolicyError):
        tpm.unseal(sealed, SEL, auth_value=b"1235")
    with pytest.raises(PolicyError):
        tpm.unseal(sealed, SEL)
    plain = tpm.seal(b"no-pin", SEL)
    with pytest.raises(PolicyError):
        tpm.unseal(plain, SEL, auth_value=b"")


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def test_seal_survives_power_cycle_with_same_measurements(tpm: SoftwareTpm) -> None:
    tpm.pcr_extend(23, {HashAlg.SHA256: D1})
    sealed = tpm.seal(b"boot", SEL)
    tpm.power_cycle()
    with pytest.raises(PolicyError):
        tpm.unseal(sealed, SEL)
    tpm.pcr_extend(23, {HashAlg.SHA256: D1})
    assert tpm.unseal(sealed, SEL) == b"boot"


def test_unseal_negative_table(tpm: SoftwareTpm, tmp_path: Path) -> None:
    sealed = tpm.seal(b"s3cret", SEL)
    other = tpm.seal(b"other", SEL)
    stranger = SoftwareTpm(tmp_path / "other.json").seal(b"s3cret", SEL)
    cases: list[tuple[str, SealedObject, PcrSelection, type[Exception]]] = [
        (
            "tampered authPolicy",
            SealedObject(_flip(sealed.public, 20), sealed.private),
            SEL,
            TpmError,
        ),
        ("tampered unique", SealedObject(_flip(sealed.public, 79), sealed.private), SEL, TpmError),
        ("tampered private", SealedObject(sealed.public, _flip(sealed.private, 60)), SEL, TpmError),
        (
            "tampered integrity",
            SealedObject(sealed.public, _flip(sealed.private, 5)),
            SEL,
            TpmError,
        ),
        ("truncated private", SealedObject(sealed.public, sealed.private[:-1]), SEL, TpmError),
        ("truncated public", SealedObject(sealed.public[:-1], sealed.private), SEL, TpmError),
        ("swapped public", SealedObject(other.public, sealed.private), SEL, TpmError),
        ("from another TPM", stranger, SEL, TpmError),
        ("other selection", sealed, PcrSelection.parse("sha256:0,7"), PolicyError),
        ("other bank", sealed, PcrSelection.parse("sha1:0,7,23"), PolicyError),
    ]
    for case, obj, sel, error in cases:
        with pytest.raises(error):
            tpm.unseal(obj, sel)
        assert case
    assert tpm.unseal(sealed, SEL) == b"s3cret"
    tpm.pcr_extend(7, {HashAlg.SHA256: D2})  # the headline case: PCRs changed
    with pytest.raises(PolicyError):
        tpm.unseal(sealed, SEL)


def test_seal_limits(tpm: SoftwareTpm) -> None:
    assert tpm.unseal(tpm.seal(b"x" * 128, SEL), SEL) == b"x" * 128
    with pytest.raises(TpmError):
        tpm.seal(b"x" * 129, SEL)
    with pytest.raises(TpmError):
        tpm.seal(b"x", SEL, auth_value=b"a" * 33)


# --- NV -------------------------------------------------------------------------------------


def test_counter_behaves_like_tss_on_swtpm(tpm: SoftwareTpm) -> None:
    # TssTpm defines then increments once (so the index is readable); on swtpm 0.7.1 the
    # first increment of a new counter gives (highest value of a deleted counter) + 1
    tpm.nv_define_counter(CTR)
    assert tpm.nv_read_counter(CTR) == 1
    assert [tpm.nv_increment(CTR), tpm.nv_increment(CTR)] == [2, 3]
    assert tpm.nv_read_counter(CTR) == 3
    with pytest.raises(ConflictError):
        tpm.nv_define_counter(CTR)
    tpm.nv_undefine(CTR)
    with pytest.raises(NotFoundError):
        tpm.nv_read_counter(CTR)
    tpm.nv_define_counter(CTR)
    assert tpm.nv_read_counter(CTR) == 4
    tpm.nv_define_counter(CTR + 1)  # a second new counter also starts above the deleted one
    assert tpm.nv_read_counter(CTR + 1) == 4


def test_counters_never_decrease(tpm: SoftwareTpm) -> None:
    seen = []
    for _ in range(3):
        tpm.nv_define_counter(CTR)
        seen.append(tpm.nv_read_counter(CTR))
        seen.append(tpm.nv_increment(CTR))
        tpm.power_cycle()
        seen.append(tpm.nv_read_counter(CTR))
        tpm.nv_undefine(CTR)
    assert seen == [1, 2, 2, 3, 4, 4, 5, 6, 6]


def test_bits_only_or_and_never_clear(tpm: SoftwareTpm) -> None:
    tpm.nv_define_bits(BITS)
    assert tpm.nv_read_bits(BITS) == 0
    tpm.nv_set_bits(BITS, 0b0101)
    tpm.nv_set_bits(BITS, 0b0010)
    tpm.nv_set_bits(BITS, 0)
    assert tpm.nv_read_bits(BITS) == 0b0111
    tpm.power_cycle()
    assert tpm.nv_read_bits(BITS) == 0b0111
    tpm.nv_undefine(BITS)
    tpm.nv_define_bits(BITS)  # fuses cannot be un-blown by redefinition
    assert tpm.nv_read_bits(BITS) == 0b0111
    tpm.nv_set_bits(BITS, 1 << 63)
    assert tpm.nv_read_bits(BITS) == 0b0111 | 1 << 63


@pytest.mark.parametrize(
    ("case", "call", "error"),
    [
        ("increment undefined", lambda t: t.nv_increment(CTR), NotFoundError),
        ("read undefined bits", lambda t: t.nv_read_bits(BITS), NotFoundError),
        ("undefine undefined", lambda t: t.nv_undefine(CTR), NotFoundError),
        (
            "bits on a counter",
            lambda t: (t.nv_define_counter(CTR), t.nv_set_bits(CTR, 1)),
            TpmError,
        ),
        ("increment bits", lambda t: (t.nv_define_bits(BITS), t.nv_increment(BITS)), TpmError),
        (
            "bits too wide",
            lambda t: (t.nv_define_bits(BITS), t.nv_set_bits(BITS, 1 << 64)),
            TpmError,
        ),
        ("negative bits", lambda t: (t.nv_define_bits(BITS), t.nv_set_bits(BITS, -1)), TpmError),
        ("not an NV handle", lambda t: t.nv_define_counter(0x81000001), TpmError),
        (
            "double define bits",
            lambda t: (t.nv_define_bits(BITS), t.nv_define_bits(BITS)),
            ConflictError,
        ),
    ],
)
def test_nv_negative_table(
    tpm: SoftwareTpm, case: str, call: object, error: type[Exception]
) -> None:
    assert callable(call)
    with pytest.raises(error):
        call(tpm)


def test_concurrent_increments_are_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    SoftwareTpm(path).nv_define_counter(CTR)

    def worker() -> None:
        t = SoftwareTpm(path)
        for _ in range(15):
            t.nv_increment(CTR)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert SoftwareTpm(path).nv_read_counter(CTR) == 1 + 45


# --- keys, quotes, certify, sign ---------------------------------------------------------------


def test_ak_is_restricted_ecdsa_p256(tpm: SoftwareTpm) -> None:
    ak = tpm.create_ak()
    pub = Public.parse(ak.public)
    assert ak.name == pub.name
    assert pub.attributes == 0x00050072
    assert pub.attributes & ObjectAttr.RESTRICTED and pub.attributes & ObjectAttr.SIGN_ENCRYPT
    assert isinstance(public_key(pub), ec.EllipticCurvePublicKey)


def test_quote_verifies_and_tracks_pcrs(tpm: SoftwareTpm) -> None:
    ak = tpm.create_ak()
    tpm.pcr_extend(7, {HashAlg.SHA256: D1})
    q = tpm.quote(ak, b"nonce-1", SEL)
    att = verify_quote(q.attest, q.signature, ak.public, b"nonce-1", SEL, tpm.pcr_read(SEL))
    assert att.extra_data == b"nonce-1"
    sig = Signature.parse(q.signature)
    assert (sig.sig_alg, sig.hash_alg) == (Alg.ECDSA, Alg.SHA256)
    before = tpm.pcr_read(SEL)
    tpm.pcr_extend(7, {HashAlg.SHA256: D2})
    with pytest.raises(Exception, match="pcrDigest"):
        verify_quote(q.attest, q.signature, ak.public, b"nonce-1", SEL, tpm.pcr_read(SEL))
    verify_quote(q.attest, q.signature, ak.public, b"nonce-1", SEL, before)


def test_quote_reset_count_moves_by_one_per_power_cycle(tmp_path: Path) -> None:
    clock = FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    tpm = SoftwareTpm(tmp_path / "s.json", clock=clock)
    ak = tpm.create_ak()
    a = Attest.parse(tpm.quote(ak, b"", SEL).attest)
    clock.advance(2.5)
    tpm.power_cycle()
    b = Attest.parse(tpm.quote(ak, b"", SEL).attest)
    assert (b.clock_info.reset_count - a.clock_info.reset_count) % 2**32 == 1
    assert b.clock_info.clock - a.clock_info.clock == 2500
    assert a.firmware_version == b.firmware_version  # obfuscated, but stable per AK


def test_quote_negative_table(tpm: SoftwareTpm, tmp_path: Path) -> None:
    ak = tpm.create_ak()
    foreign = SoftwareTpm(tmp_path / "f.json").create_ak()
    signing = tpm.create_signing_key()
    cases: list[tuple[str, TpmKey, bytes]] = [
        ("nonce too long", ak, b"n" * 65),
        ("AK from another TPM", foreign, b""),
        ("tampered AK private", TpmKey(ak.public, _flip(ak.private, 50), ak.name), b""),
        ("AK name mismatch", TpmKey(ak.public, ak.private, signing.name), b""),
        ("unrestricted key", signing, b""),
    ]
    for case, key, nonce in cases:
        with pytest.raises(TpmError):
            tpm.quote(key, nonce, SEL)
        assert case


def test_certify(tpm: SoftwareTpm) -> None:
    ak, key = tpm.create_ak(), tpm.create_signing_key()
    c = tpm.certify(ak, key, b"challenge")
    att = verify_certify(c.attest, c.signature, ak.public, b"challenge", key.public)
    assert isinstance(att.attested, CertifyInfo) and att.attested.name == key.name
    with pytest.raises(TpmError):
        tpm.certify(ak, TpmKey(key.public, _flip(key.private, 40), key.name), b"")


@pytest.mark.parametrize("algorithm", ["ecc-p256", "rsa2048"])
def test_sign(tpm: SoftwareTpm, algorithm: str) -> None:
    key = tpm.create_signing_key(algorithm)
    digest = hashlib.sha256(b"csr").digest()
    sig = Signature.parse(tpm.sign(key, digest))
    pub = public_key(key.public)
    prehashed = utils.Prehashed(hashes.SHA256())
    if isinstance(pub, ec.EllipticCurvePublicKey):
        der = utils.encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
        pub.verify(der, digest, ec.ECDSA(prehashed))
    else:
        assert sig.sig_alg == Alg.RSASSA
        pub.verify(sig.sig, digest, padding.PKCS1v15(), prehashed)
    attrs = Public.parse(key.public).attributes
    assert attrs & ObjectAttr.FIXED_TPM and not attrs & ObjectAttr.RESTRICTED


def test_sign_negative_table(tpm: SoftwareTpm) -> None:
    key, ak = tpm.create_signing_key(), tpm.create_ak()
    with pytest.raises(TpmError):
        tpm.sign(key, b"short")
    with pytest.raises(TpmError) as info:  # restricted keys need a hash-check ticket
        tpm.sign(ak, bytes(32))
    assert info.value.rc == 0x0A1
    with pytest.raises(TpmError):
        tpm.sign(TpmKey(key.public, _flip(key.private, 30), key.name), bytes(32))
    with pytest.raises(ConfigError):
        tpm.create_signing_key("dsa")


# --- EK and credentials -----------------------------------------------------------------------


def test_ek_is_tcg_l1_and_stable(ek_tpm: SoftwareTpm) -> None:
    ek = Public.parse(ek_tpm.ek_public())
    assert (ek.type, ek.name_alg, ek.attributes) == (Alg.RSA, Alg.SHA256, 0x000300B2)
    assert ek.auth_policy == EK_POLICY
    assert ek.parameters == RsaParms(SymDef(Alg.AES, 128, Alg.CFB), Scheme(), 2048, 0)
    assert SoftwareTpm(ek_tpm.state_path).ek_public() == ek_tpm.ek_public()


def test_activate_credential(ek_tpm: SoftwareTpm) -> None:
    ak = ek_tpm.create_ak()
    blob, secret = make_credential(ek_tpm.ek_public(), ak.name, b"fleet-challenge")
    assert ek_tpm.activate_credential(ak, blob, secret) == b"fleet-challenge"


def test_activate_negative_table(ek_tpm: SoftwareTpm, tmp_path: Path) -> None:
    ak, other_ak = ek_tpm.create_ak(), ek_tpm.create_ak()
    blob, secret = make_credential(ek_tpm.ek_public(), ak.name, b"c")
    other_ek = SoftwareTpm(tmp_path / "other.json").ek_public()
    blob2, secret2 = make_credential(other_ek, ak.name, b"c")
    cases = [
        ("credential for another EK", ak, blob2, secret2),
        ("credential for another AK", other_ak, blob, secret),
        ("tampered blob", ak, _flip(blob, 10), secret),
        ("tampered HMAC", ak, _flip(blob, 4), secret),
        ("tampered secret", ak, blob, _flip(secret, 100)),
        ("truncated secret", ak, blob, secret[:-1]),
        ("truncated blob", ak, blob[:-1], secret),
        ("tampered AK", TpmKey(ak.public, _flip(ak.private, 40), ak.name), blob, secret),
    ]
    for case, key, b, s in cases:
        with pytest.raises(TpmError):
            ek_tpm.activate_credential(key, b, s)
        assert case


# --- the state file -------------------------------------------------------------------------


def test_state_file_is_private_json(tpm: SoftwareTpm) -> None:
    assert os.stat(tpm.state_path).st_mode & 0o777 == 0o600
    doc = json.loads(tpm.state_path.read_bytes())
    assert doc["format"] == "bastion-software-tpm" and doc["version"] == 1
    assert len(doc["pcrs"]["sha256"]) == 24


@pytest.mark.parametrize(
    ("case", "edit"),
    [
        ("not json", lambda d: None),
        ("wrong format", lambda d: d.update(format="other")),
        ("short seed", lambda d: d["seeds"].update(storage="00")),
        ("bad NV type", lambda d: d["nv"].update({"0x01500016": {"type": "x", "value": 1}})),
        ("negative counter", lambda d: d.update(counter_max=-1)),
        ("PCR missing", lambda d: d["pcrs"]["sha256"].pop()),
    ],
)
def test_corrupt_state_is_a_tpm_error(tpm: SoftwareTpm, case: str, edit: object) -> None:
    assert callable(edit)
    doc = json.loads(tpm.state_path.read_bytes())
    edit(doc)
    tpm.state_path.write_bytes(b"{not json" if case == "not json" else json.dumps(doc).encode())
    with pytest.raises(TpmError):
        tpm.pcr_read(SEL)
    with pytest.raises(TpmError):
        SoftwareTpm(tpm.state_path)


def test_sealed_objects_are_useless_with_a_new_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    sealed = SoftwareTpm(path).seal(b"k", SEL)
    path.unlink()
    with pytest.raises(TpmError):
        SoftwareTpm(path).unseal(sealed, SEL)


def test_sha1_bank_quote_uses_the_signing_hash(tpm: SoftwareTpm) -> None:
    sel = PcrSelection.parse("sha1:0,7")
    tpm.pcr_extend(7, {HashAlg.SHA1: D1[:20]})
    ak = tpm.create_ak()
    q = tpm.quote(ak, b"n", sel)
    att = verify_quote(q.attest, q.signature, ak.public, b"n", sel, tpm.pcr_read(sel))
    values = tpm.pcr_read(sel)
    assert att.attested.pcr_digest == hashlib.sha256(values[0] + values[7]).digest()  # type: ignore[union-attr]


def test_state_with_infinite_clock_is_corrupt(tpm: SoftwareTpm) -> None:
    doc = json.loads(tpm.state_path.read_bytes())
    doc["clock_at"] = float("inf")
    tpm.state_path.write_text(json.dumps(doc))
    with pytest.raises(TpmError):
        tpm.quote(tpm.create_ak(), b"", SEL)
