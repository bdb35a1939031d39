"""TPM 2.0 codecs against bytes made by swtpm + tpm2-tools (tests/vectors/tpm)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bastion.errors import FormatError, LimitError
from bastion.formats.tpm2 import (
    ST_ATTEST_CERTIFY,
    ST_ATTEST_QUOTE,
    Alg,
    Attest,
    CertifyInfo,
    ClockInfo,
    CredentialFile,
    Curve,
    EccParms,
    EccPoint,
    EncryptedSecret,
    IdObject,
    KeyedHashParms,
    ObjectAttr,
    PcrSelect,
    PcrSelectionList,
    PcrsFile,
    Private,
    Public,
    QuoteInfo,
    RsaParms,
    Scheme,
    Sensitive,
    Signature,
    SymCipherParms,
    SymDef,
    object_name,
    tpm2b,
)
from bastion.tpm.pcr import EK_POLICY

VEC = Path(__file__).resolve().parents[2] / "vectors" / "tpm"


def vec(name: str) -> bytes:
    return (VEC / name).read_bytes()


# --- real tool output parses and re-serialises byte for byte -----------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ek.pub", Public),
        ("ak.tpm2b_public", Public),
        ("quote.msg", Attest),
        ("quote.sig", Signature),
        ("quote.pcrs", PcrsFile),
        ("credential.blob", CredentialFile),
    ],
)
def test_vector_round_trip(name: str, cls: type) -> None:
    data = vec(name)
    assert cls.parse(data).to_bytes() == data


@pytest.mark.parametrize(
    "name", ["ek.pub", "ak.tpm2b_public", "quote.msg", "quote.sig", "quote.pcrs", "credential.blob"]
)
def test_every_truncation_is_a_format_error(name: str) -> None:
    data = vec(name)
    cls = {
        "ek.pub": Public,
        "ak.tpm2b_public": Public,
        "quote.msg": Attest,
        "quote.sig": Signature,
        "quote.pcrs": PcrsFile,
        "credential.blob": CredentialFile,
    }[name]
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            cls.parse(data[:cut])
    with pytest.raises(FormatError):
        cls.parse(data + b"\0")


def test_ek_is_tcg_template_l1() -> None:
    ek = Public.parse(vec("ek.pub"))
    assert ek.type == Alg.RSA and ek.name_alg == Alg.SHA256
    assert ek.attributes == 0x000300B2
    assert ek.auth_policy == EK_POLICY
    assert ek.parameters == RsaParms(SymDef(Alg.AES, 128, Alg.CFB), Scheme(), 2048, 0)
    assert isinstance(ek.unique, bytes) and len(ek.unique) == 256


def test_ak_name_matches_tpm2_tools() -> None:
    ak = Public.parse(vec("ak.tpm2b_public"))
    assert ak.name == vec("ak.name") == object_name(vec("ak.tpm2b_public"))
    assert ak.name[:2] == b"\x00\x0b"
    assert ak.name[2:] == hashlib.sha256(ak.to_tpmt()).digest()
    assert ak.attributes & ObjectAttr.RESTRICTED and ak.attributes & ObjectAttr.SIGN_ENCRYPT
    assert isinstance(ak.parameters, EccParms)
    assert ak.parameters.scheme == Scheme(Alg.ECDSA, Alg.SHA256)
    assert ak.parameters.curve == Curve.NIST_P256


def test_quote_fields() -> None:
    att = Attest.parse(vec("quote.msg"))
    assert att.type == ST_ATTEST_QUOTE
    assert att.extra_data == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert isinstance(att.attested, QuoteInfo)
    assert att.attested.pcr_select.selections[0].indexes == (0, 7, 23)
    pcrs = vec("pcr_0_7_23.bin")
    assert att.attested.pcr_digest == hashlib.sha256(pcrs).digest()
    sig = Signature.parse(vec("quote.sig"))
    assert (sig.sig_alg, sig.hash_alg, len(sig.r), len(sig.s)) == (Alg.ECDSA, Alg.SHA256, 32, 32)


def test_pcrs_file_values_match_pcrread() -> None:
    pf = PcrsFile.parse(vec("quote.pcrs"))
    raw = vec("pcr_0_7_23.bin")
    assert pf.bank_values() == {Alg.SHA256: {0: raw[:32], 7: raw[32:64], 23: raw[64:]}}
    again = PcrsFile.from_values(Alg.SHA256, {0: raw[:32], 7: raw[32:64], 23: raw[64:]})
    assert again.to_bytes() == vec("quote.pcrs")


def test_pcrs_file_many_pcrs_uses_chunks_of_eight() -> None:
    values = {i: bytes([i]) * 32 for i in range(20)}
    pf = PcrsFile.from_values(Alg.SHA256, values)
    data = pf.to_bytes()
    assert len(data) == 132 + 4 + 3 * 532
    assert PcrsFile.parse(data).bank_values() == {Alg.SHA256: values}


def test_pcrs_file_value_count_must_match_selection() -> None:
    pf = PcrsFile(PcrSelectionList.single(Alg.SHA256, [0, 1]), (bytes(32),))
    with pytest.raises(FormatError, match="do not match"):
        PcrsFile.parse(pf.to_bytes())


def test_credential_file_layout() -> None:
    cf = CredentialFile.parse(vec("credential.blob"))
    obj = IdObject.parse(cf.id_object)
    assert len(obj.integrity_hmac) == 32
    assert len(obj.enc_identity) == 2 + 32  # TPM2B_DIGEST of the 32-byte secret
    assert len(EncryptedSecret.parse(cf.encrypted_secret).secret) == 256
    assert vec("credential.blob")[:8] == bytes.fromhex("badcc0de00000001")


# --- constructed structures -------------------------------------------------------------------


def _sealed_public() -> Public:
    return Public(
        Alg.KEYEDHASH,
        Alg.SHA256,
        0x12,
        bytes(range(32)),
        KeyedHashParms(),
        bytes(32),
    )


def test_keyedhash_public_has_systemds_size() -> None:
    # systemd v252's sealed object: TPM2B_PUBLIC of 80 bytes (boot-and-storage-formats §3.3)
    data = _sealed_public().to_bytes()
    assert len(data) == 80
    assert Public.parse(data) == _sealed_public()


@pytest.mark.parametrize(
    "pub",
    [
        _sealed_public(),
        Public(
            Alg.KEYEDHASH,
            Alg.SHA256,
            0x40072,
            b"",
            KeyedHashParms(Scheme(Alg.HMAC, Alg.SHA256)),
            bytes(32),
        ),
        Public(
            Alg.KEYEDHASH,
            Alg.SHA1,
            0x12,
            b"",
            KeyedHashParms(Scheme(Alg.XOR, Alg.SHA256, Alg.KDF1_SP800_108)),
            b"",
        ),
        Public(
            Alg.SYMCIPHER,
            Alg.SHA256,
            0x30072,
            b"",
            SymCipherParms(SymDef(Alg.AES, 256, Alg.CFB)),
            bytes(32),
        ),
        Public(
            Alg.ECC,
            Alg.SHA384,
            0x40072,
            b"",
            EccParms(SymDef(), Scheme(Alg.ECDAA, Alg.SHA256, 7), Curve.NIST_P384),
            EccPoint(bytes(48), bytes(48)),
        ),
        Public(
            Alg.RSA,
            Alg.SHA256,
            0x60072,
            b"",
            RsaParms(SymDef(), Scheme(Alg.RSAES), 3072, 3),
            bytes(384),
        ),
    ],
)
def test_public_round_trip(pub: Public) -> None:
    assert Public.parse(pub.to_bytes()) == pub
    assert Public.from_tpmt(pub.to_tpmt()) == pub


def test_sensitive_private_round_trip() -> None:
    s = Sensitive(Alg.KEYEDHASH, b"pin", bytes(32), b"secret")
    assert Sensitive.parse(s.to_bytes()) == s
    p = Private(b"\x01\x02")
    assert Private.parse(p.to_bytes()) == p


def test_certify_attest_round_trip() -> None:
    att = Attest(
        ST_ATTEST_CERTIFY,
        b"\x00\x0b" + bytes(32),
        b"nonce",
        ClockInfo(1, 2, 3, True),
        4,
        CertifyInfo(b"\x00\x0b" + bytes(32), b"\x00\x0b" + bytes(range(32))),
    )
    assert Attest.parse(att.to_bytes()) == att


@pytest.mark.parametrize(
    "sig",
    [
        Signature(Alg.NULL),
        Signature(Alg.ECDSA, Alg.SHA256, r=b"\x01" * 32, s=b"\x02" * 32),
        Signature(Alg.RSASSA, Alg.SHA256, sig=b"\x03" * 256),
        Signature(Alg.RSAPSS, Alg.SHA384, sig=b"\x03" * 256),
        Signature(Alg.HMAC, Alg.SHA1, sig=b"\x04" * 20),
    ],
)
def test_signature_round_trip(sig: Signature) -> None:
    assert Signature.parse(sig.to_bytes()) == sig


def test_pcr_select_bitmap() -> None:
    sel = PcrSelect.from_indexes(Alg.SHA256, [0, 7, 23])
    assert sel.select == b"\x81\x00\x80"
    assert sel.indexes == (0, 7, 23)
    assert PcrSelectionList.parse(PcrSelectionList((sel,)).to_bytes()).selections == (sel,)


# --- negative table ---------------------------------------------------------------------------


def _flip(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


@pytest.mark.parametrize(
    ("case", "data", "cls", "error"),
    [
        ("attest bad magic", _flip(vec("quote.msg"), 0, 0xFE), Attest, FormatError),
        ("attest unknown type", _flip(vec("quote.msg"), 5, 0x99), Attest, FormatError),
        ("public unknown type", _flip(vec("ak.tpm2b_public"), 3, 0x77), Public, FormatError),
        ("public unknown nameAlg", _flip(vec("ak.tpm2b_public"), 5, 0x77), Public, FormatError),
        ("public unknown curve", b"", Public, FormatError),
        ("signature unknown alg", _flip(vec("quote.sig"), 1, 0x77), Signature, FormatError),
        ("signature unknown hash", _flip(vec("quote.sig"), 3, 0x77), Signature, FormatError),
        ("oversized TPM2B", tpm2b(bytes(5000)), Private, LimitError),
        ("credential header", _flip(vec("credential.blob"), 0, 0), CredentialFile, FormatError),
        (
            "pcr selection count",
            b"\x00\x00\x01\x00" + bytes(1000),
            PcrSelectionList,
            LimitError,
        ),
        (
            "pcr sizeofSelect",
            b"\x00\x00\x00\x01\x00\x0b\x09" + bytes(9),
            PcrSelectionList,
            LimitError,
        ),
        ("pcrs file bank count", b"\x11" + bytes(200), PcrsFile, LimitError),
        ("sensitive type", tpm2b(b"\x00\x99" + bytes(6)), Sensitive, FormatError),
        ("clock safe flag", b"", Attest, FormatError),
    ],
)
def test_negative_table(case: str, data: bytes, cls: type, error: type[Exception]) -> None:
    if case == "public unknown curve":
        pub = Public.parse(vec("ak.tpm2b_public"))
        tpmt = pub.to_tpmt()
        # curve id follows type(2) nameAlg(2) attrs(4) policy(2) sym(2) scheme(4)
        data = tpm2b(tpmt[:16] + b"\x00\x99" + tpmt[18:])
    if case == "clock safe flag":
        att = vec("quote.msg")
        # magic 4, type 2, signer 2+34, extra 2+16, clock 8, reset 4, restart 4 -> safe
        data = _flip(att, 4 + 2 + 36 + 18 + 16, 2)
    with pytest.raises(error):
        cls.parse(data)
