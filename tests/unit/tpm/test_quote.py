"""Quote/certify verification and MakeCredential, on swtpm's own bytes and negative tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    SignatureError,
    VerificationError,
)
from bastion.formats.tpm2 import (
    ST_ATTEST_CERTIFY,
    Alg,
    Attest,
    CertifyInfo,
    ClockInfo,
    Curve,
    EccParms,
    EccPoint,
    EncryptedSecret,
    IdObject,
    Public,
    Reader,
    RsaParms,
    Scheme,
    Signature,
    SymDef,
)
from bastion.tpm.base import PcrSelection
from bastion.tpm.pcr import EK_POLICY
from bastion.tpm.quote import (
    credential_to_secret,
    kdfa,
    kdfe,
    load_public,
    make_credential,
    oaep,
    public_pem,
    quote_result,
    secret_to_credential,
    verify_certify,
    verify_quote,
    verify_signature,
)

VEC = Path(__file__).resolve().parents[2] / "vectors" / "tpm"
NONCE = bytes.fromhex("00112233445566778899aabbccddeeff")
SEL = PcrSelection.parse("sha256:0,7,23")


def vec(name: str) -> bytes:
    return (VEC / name).read_bytes()


def pcrs() -> dict[int, bytes]:
    raw = vec("pcr_0_7_23.bin")
    return {0: raw[:32], 7: raw[32:64], 23: raw[64:96]}


MSG, SIG, AK = vec("quote.msg"), vec("quote.sig"), vec("ak.tpm2b_public")


@pytest.mark.parametrize("ak", [AK, vec("ak.pub"), vec("ak.pub").decode(), Public.parse(AK)])
def test_swtpm_quote_verifies_with_every_ak_spelling(ak: object) -> None:
    att = verify_quote(MSG, SIG, ak, NONCE, SEL, pcrs())  # type: ignore[arg-type]
    assert att.clock_info.reset_count == 1


def test_public_pem_matches_tpm2_createak_pem() -> None:
    assert public_pem(AK) == vec("ak.pub")


def _flip_bit(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]


_OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    ("case", "msg", "sig", "ak", "nonce", "sel", "values", "error", "area"),
    [
        ("wrong nonce", MSG, SIG, AK, b"\x00" * 16, SEL, pcrs(), DigestMismatchError, "nonce"),
        ("empty nonce", MSG, SIG, AK, b"", SEL, pcrs(), DigestMismatchError, "nonce"),
        ("longer nonce", MSG, SIG, AK, NONCE + b"\0", SEL, pcrs(), DigestMismatchError, "nonce"),
        (
            "wrong PCR values",
            MSG,
            SIG,
            AK,
            NONCE,
            SEL,
            {**pcrs(), 7: b"\x01" * 32},
            DigestMismatchError,
            "pcr-digest",
        ),
        (
            "other selection",
            MSG,
            SIG,
            AK,
            NONCE,
            PcrSelection.parse("sha256:0,7"),
            pcrs(),
            DigestMismatchError,
            "pcr-selection",
        ),
        (
            "other bank",
            MSG,
            SIG,
            AK,
            NONCE,
            PcrSelection.parse("sha1:0,7,23"),
            {i: bytes(20) for i in (0, 7, 23)},
            DigestMismatchError,
            "pcr-selection",
        ),
        ("wrong AK", MSG, SIG, _OTHER_KEY.public_key(), NONCE, SEL, pcrs(), SignatureError, None),
        ("tampered magic", _flip_bit(MSG, 0), SIG, AK, NONCE, SEL, pcrs(), SignatureError, None),
        ("tampered signer", _flip_bit(MSG, 10), SIG, AK, NONCE, SEL, pcrs(), SignatureError, None),
        ("tampered nonce", _flip_bit(MSG, 46), SIG, AK, NONCE, SEL, pcrs(), SignatureError, None),
        ("tampered clock", _flip_bit(MSG, 60), SIG, AK, NONCE, SEL, pcrs(), SignatureError, None),
        (
            "tampered digest",
            _flip_bit(MSG, len(MSG) - 1),
            SIG,
            AK,
            NONCE,
            SEL,
            pcrs(),
            SignatureError,
            None,
        ),
        ("truncated attest", MSG[:-1], SIG, AK, NONCE, SEL, pcrs(), SignatureError, None),
        ("tampered r", MSG, _flip_bit(SIG, 10), AK, NONCE, SEL, pcrs(), SignatureError, None),
        (
            "tampered s",
            MSG,
            _flip_bit(SIG, len(SIG) - 1),
            AK,
            NONCE,
            SEL,
            pcrs(),
            SignatureError,
            None,
        ),
        ("truncated signature", MSG, SIG[:-1], AK, NONCE, SEL, pcrs(), FormatError, None),
        ("NULL signature", MSG, b"\x00\x10", AK, NONCE, SEL, pcrs(), SignatureError, None),
        (
            "RSA scheme for ECC key",
            MSG,
            Signature(Alg.RSASSA, Alg.SHA256, sig=b"\1" * 256).to_bytes(),
            AK,
            NONCE,
            SEL,
            pcrs(),
            SignatureError,
            None,
        ),
        ("AK is garbage", MSG, SIG, b"\x00\x02\x00\x99", NONCE, SEL, pcrs(), FormatError, None),
    ],
)
def test_quote_negative_table(
    case: str,
    msg: bytes,
    sig: bytes,
    ak: object,
    nonce: bytes,
    sel: PcrSelection,
    values: dict[int, bytes],
    error: type[Exception],
    area: str | None,
) -> None:
    with pytest.raises(error) as info:
        verify_quote(msg, sig, ak, nonce, sel, values)  # type: ignore[arg-type]
    if area is not None:
        assert isinstance(info.value, DigestMismatchError) and info.value.area == area


def test_quote_result_collects_every_failure() -> None:
    res = quote_result(MSG, SIG, _OTHER_KEY.public_key(), b"x", SEL, {**pcrs(), 0: b"\1" * 32})
    assert not res.ok
    assert [f.id for f in res.failures] == ["quote.signature", "quote.nonce", "quote.pcr-digest"]
    assert res.attest is not None and res.attest.extra_data == NONCE
    ok = quote_result(MSG, SIG, AK, NONCE, SEL, pcrs())
    assert ok.ok and ok.raise_first() == Attest.parse(MSG)


# --- certify, with a key made here ---------------------------------------------------------


def _ecdsa_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes

    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return Signature(
        Alg.ECDSA, Alg.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big")
    ).to_bytes()


def test_verify_certify_and_its_negatives() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certified = vec("ek.pub")
    name = Public.parse(certified).name
    att = Attest(
        ST_ATTEST_CERTIFY,
        b"\0\x0b" + bytes(32),
        b"n1",
        ClockInfo(5, 1, 0, True),
        7,
        CertifyInfo(name, b"\0\x0b" + bytes(32)),
    ).to_bytes()
    sig = _ecdsa_sign(key, att)
    assert verify_certify(att, sig, key.public_key(), b"n1", certified).clock_info.clock == 5
    with pytest.raises(DigestMismatchError):
        verify_certify(att, sig, key.public_key(), b"n2", certified)
    with pytest.raises(DigestMismatchError):
        verify_certify(att, sig, key.public_key(), b"n1", AK)
    with pytest.raises(SignatureError):
        verify_certify(att, sig, _OTHER_KEY.public_key(), b"n1", certified)
    with pytest.raises(VerificationError):  # a quote is not a certification
        verify_certify(MSG, SIG, AK, NONCE, certified)
    with pytest.raises(VerificationError):  # and a certification is not a quote
        verify_quote(att, sig, key.public_key(), b"n1", SEL, pcrs())


def test_verify_signature_rsa_schemes() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = rsa.generate_private_key(65537, 2048)
    msg = b"attest"
    pkcs = key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    pss = key.sign(msg, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    verify_signature(key.public_key(), msg, Signature(Alg.RSASSA, Alg.SHA256, sig=pkcs).to_bytes())
    verify_signature(key.public_key(), msg, Signature(Alg.RSAPSS, Alg.SHA256, sig=pss).to_bytes())
    with pytest.raises(SignatureError):
        verify_signature(
            key.public_key(), msg + b"!", Signature(Alg.RSASSA, Alg.SHA256, sig=pkcs).to_bytes()
        )


# --- credentials ---------------------------------------------------------------------------


def test_kdfa_definition() -> None:
    import hmac

    key = b"k" * 32
    one = hmac.digest(key, b"\0\0\0\1" + b"STORAGE\0" + b"u" + b"v" + b"\0\0\0\x80", "sha256")
    assert kdfa(Alg.SHA256, key, b"STORAGE", b"u", b"v", 128) == one[:16]
    two = hmac.digest(key, b"\0\0\0\2" + b"X\0" + b"\0\0\1\0", "sha256")
    first = hmac.digest(key, b"\0\0\0\1" + b"X\0" + b"\0\0\1\0", "sha256")
    assert kdfa(Alg.SHA256, key, b"X\0", b"", b"", 256) == first
    assert kdfa(Alg.SHA1, key, b"X", b"", b"", 256)[:20] != first[:20]
    assert len(kdfa(Alg.SHA256, key, b"X", b"", b"", 512)) == 64 and two  # counter 2 used
    assert kdfa(Alg.SHA256, key, b"X", b"", b"", 4)[0] < 16


@pytest.fixture(scope="module")
def ek() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(65537, 2048)
    n = key.public_key().public_numbers().n.to_bytes(256, "big")
    pub = Public(
        Alg.RSA,
        Alg.SHA256,
        0x000300B2,
        EK_POLICY,
        RsaParms(SymDef(Alg.AES, 128, Alg.CFB), Scheme(), 2048, 0),
        n,
    )
    return key, pub.to_bytes()


def test_make_credential_round_trip(ek: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, ek_pub = ek
    name = Public.parse(AK).name
    blob, enc = make_credential(ek_pub, name, b"s" * 32)
    seed = key.decrypt(EncryptedSecret.parse(enc).secret, oaep(Alg.SHA256))
    assert len(seed) == 32
    assert credential_to_secret(blob, name, seed) == b"s" * 32
    with pytest.raises(VerificationError):  # bound to the AK name
        credential_to_secret(blob, b"\0\x0b" + bytes(32), seed)
    with pytest.raises(VerificationError):  # and to the seed
        credential_to_secret(blob, name, bytes(32))
    obj = IdObject.parse(blob)
    tampered = IdObject(obj.integrity_hmac, bytes([obj.enc_identity[0] ^ 1]) + obj.enc_identity[1:])
    with pytest.raises(VerificationError):
        credential_to_secret(tampered.to_bytes(), name, seed)


def test_secret_to_credential_is_deterministic_given_seed() -> None:
    name = Public.parse(AK).name
    a = secret_to_credential(b"abc", name, b"\7" * 32)
    assert a == secret_to_credential(b"abc", name, b"\7" * 32)
    assert credential_to_secret(a, name, b"\7" * 32) == b"abc"


@pytest.mark.parametrize(
    ("case", "secret", "name"),
    [
        ("empty secret", b"", b"\0\x0b" + bytes(32)),
        ("secret too long", b"x" * 33, b"\0\x0b" + bytes(32)),
        ("bad name", b"x", b"\0"),
    ],
)
def test_make_credential_rejects(
    ek: tuple[rsa.RSAPrivateKey, bytes], case: str, secret: bytes, name: bytes
) -> None:
    with pytest.raises(ConfigError):
        make_credential(ek[1], name, secret)


def test_make_credential_needs_rsa_storage_ek() -> None:
    with pytest.raises(ConfigError):
        make_credential(AK, Public.parse(AK).name, b"x")


def test_load_public_rejects_non_key_pem() -> None:
    with pytest.raises(FormatError):
        load_public(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert hashlib.sha256(vec("ak.pub")).digest()


def test_kdfe_definition() -> None:
    z, u, v = b"z" * 32, b"u" * 32, b"v" * 32
    first = hashlib.sha256(b"\0\0\0\1" + z + b"IDENTITY\0" + u + v).digest()
    second = hashlib.sha256(b"\0\0\0\2" + z + b"IDENTITY\0" + u + v).digest()
    assert kdfe(Alg.SHA256, z, b"IDENTITY", u, v, 256) == first
    assert kdfe(Alg.SHA256, z, b"IDENTITY\0", u, v, 384) == first + second[:16]


def test_make_credential_ecc_ek_round_trip() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    nums = key.public_key().public_numbers()
    ek_pub = Public(
        Alg.ECC, Alg.SHA256, 0x000300B2, EK_POLICY,
        EccParms(SymDef(Alg.AES, 128, Alg.CFB), Scheme(), Curve.NIST_P256),
        EccPoint(nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")),
    )  # fmt: skip
    name = Public.parse(AK).name
    blob, enc = make_credential(ek_pub.to_bytes(), name, b"ecc-secret")
    # the TPM side: ECDH with the EK private key on the ephemeral point, then KDFe
    r = Reader(EncryptedSecret.parse(enc).secret, "point")
    point = EccPoint.read(r)
    r.done()
    eph = ec.EllipticCurvePublicNumbers(
        int.from_bytes(point.x, "big"), int.from_bytes(point.y, "big"), ec.SECP256R1()
    ).public_key()
    z = key.exchange(ec.ECDH(), eph)
    seed = kdfe(Alg.SHA256, z, b"IDENTITY", point.x, ek_pub.unique.x, 256)  # type: ignore[union-attr]
    assert credential_to_secret(blob, name, seed) == b"ecc-secret"
    with pytest.raises(ConfigError):
        make_credential(ek_pub.to_bytes(), name, b"x", seed=bytes(32))
