"""Kernel module signatures against sign-file vectors (tests/vectors/modsig)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bastion.errors import ConflictError, FormatError, LimitError, SignatureError
from bastion.formats import modsig
from bastion.formats.modsig import (
    MAGIC,
    CmsSignature,
    ModuleSignatureInfo,
    SignedModule,
    sign_module,
    verify_module,
)

VEC = Path(__file__).resolve().parents[2] / "vectors" / "modsig"
HASHES = ["sha256", "sha384", "sha512"]
_H = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def _key() -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((VEC / "test-key.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _cert() -> x509.Certificate:
    return x509.load_der_x509_certificate((VEC / "test-cert.der").read_bytes())


def _signer(key: rsa.RSAPrivateKey, h: str):  # type: ignore[no-untyped-def]
    return lambda data: key.sign(data, padding.PKCS1v15(), _H[h]())


@pytest.mark.parametrize("h", HASHES)
def test_byte_identical_to_sign_file(h: str) -> None:
    module = (VEC / "module.ko").read_bytes()
    ours = sign_module(module, _cert(), _signer(_key(), h), h)
    assert ours == (VEC / f"module.{h}.ko").read_bytes()


@pytest.mark.parametrize("h", HASHES)
def test_verifies_sign_file_output(h: str) -> None:
    signed = verify_module((VEC / f"module.{h}.ko").read_bytes(), _cert())
    assert signed.module == (VEC / "module.ko").read_bytes()
    assert signed.cms().hash_name == h


def test_split_matches_detached_signature() -> None:
    signed = SignedModule.parse((VEC / "module.sha256.ko").read_bytes())
    assert signed.signature == (VEC / "module.sha256.p7s").read_bytes()
    assert signed.info == ModuleSignatureInfo(492)
    assert signed.info.to_bytes() == bytes.fromhex("000002000000000000000" + "1ec")
    cms = signed.cms()
    assert cms.serial == _cert().serial_number
    assert cms.issuer == _cert().issuer.public_bytes()
    assert cms.to_bytes() == signed.signature


def test_trailer_layout() -> None:
    data = (VEC / "module.sha256.ko").read_bytes()
    assert data.endswith(MAGIC)
    fields = struct.unpack(">BBBBB3sI", data[-len(MAGIC) - 12 : -len(MAGIC)])
    assert fields == (0, 0, 2, 0, 0, b"\0\0\0", 492)


def test_every_flipped_byte_is_refused() -> None:
    data = (VEC / "module.sha256.ko").read_bytes()
    cert = _cert()
    module_len = 6000
    positions = [
        *list(range(0, module_len, 97)),
        module_len - 1,
        *list(range(module_len, len(data))),
    ]
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises((SignatureError, FormatError)):
            verify_module(bytes(bad), cert)


@pytest.mark.parametrize(
    "case",
    [
        "wrong certificate",
        "same serial other key",
        "truncated",
        "appended byte",
        "unsigned",
        "stripped magic",
    ],
)
def test_verify_negative_table(case: str) -> None:
    data = (VEC / "module.sha256.ko").read_bytes()
    cert = _cert()
    if case in ("wrong certificate", "same serial other key"):
        import datetime as dt

        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        serial = cert.serial_number if case == "same serial other key" else 12345
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(cert.subject)
            .issuer_name(cert.issuer)
            .public_key(other.public_key())
            .serial_number(serial)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(other, hashes.SHA256())
        )
    elif case == "truncated":
        data = data[:-1]
    elif case == "appended byte":
        data = data + b"\0"
    elif case == "unsigned":
        data = (VEC / "module.ko").read_bytes()
    elif case == "stripped magic":
        data = data[: -len(MAGIC)]
    with pytest.raises((SignatureError, FormatError)):
        verify_module(data, cert)


def test_sign_refuses_signed_module() -> None:
    with pytest.raises(ConflictError):
        sign_module((VEC / "module.sha256.ko").read_bytes(), _cert(), _signer(_key(), "sha256"))


def test_sign_refuses_non_rsa_cert() -> None:
    import datetime as dt

    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "ec")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(k, hashes.SHA256())
    )
    with pytest.raises(FormatError):
        sign_module(b"mod", cert, lambda d: b"")


def test_wrong_signing_callable_is_caught() -> None:
    # a signer using the wrong hash gives a signature that does not verify: sign_module checks
    with pytest.raises(SignatureError):
        sign_module(b"module", _cert(), _signer(_key(), "sha512"), "sha256")


@pytest.mark.parametrize(
    ("trailer", "error"),
    [
        (bytes.fromhex("000001000000000000000010"), FormatError),  # id_type PGP
        (bytes.fromhex("010002000000000000000010"), FormatError),  # algo set
        (bytes.fromhex("000002000000000100000010"), FormatError),  # pad set
        (bytes.fromhex("000002000000000000000000"), LimitError),  # zero length
        (bytes.fromhex("0000020000000000ffffffff"), LimitError),  # huge length
        (b"\0" * 11, FormatError),
    ],
)
def test_trailer_refused(trailer: bytes, error: type) -> None:
    with pytest.raises(error):
        ModuleSignatureInfo.parse(trailer)


def test_sig_len_beyond_data_refused() -> None:
    data = ModuleSignatureInfo(100).to_bytes() + MAGIC
    with pytest.raises(FormatError):
        SignedModule.parse(b"x" * 50 + data)


def _cms_variant(mutate: str) -> bytes:
    cms = SignedModule.parse((VEC / "module.sha256.ko").read_bytes()).signature
    if mutate == "indefinite length":
        return cms[:1] + b"\x80" + cms[4:]
    if mutate == "trailing garbage":
        return cms + b"\0"
    if mutate == "signed data version 3":
        return cms.replace(bytes.fromhex("020101310d"), bytes.fromhex("020103310d"), 1)
    if mutate == "md5 digest":
        return cms.replace(bytes.fromhex("608648016503040201"), bytes.fromhex("2a864886f70d020500"))
    if mutate == "not signedData":
        return cms.replace(
            bytes.fromhex("2a864886f70d010702"), bytes.fromhex("2a864886f70d010703"), 1
        )
    raise AssertionError(mutate)


@pytest.mark.parametrize(
    "mutate",
    [
        "indefinite length",
        "trailing garbage",
        "signed data version 3",
        "md5 digest",
        "not signedData",
    ],
)
def test_cms_parser_refuses(mutate: str) -> None:
    with pytest.raises(FormatError):
        CmsSignature.parse(_cms_variant(mutate))


def test_der_helpers() -> None:
    assert modsig.der_int(0) == b"\x02\x01\x00"
    assert modsig.der_int(128) == b"\x02\x02\x00\x80"
    assert modsig.der_int(-1) == b"\x02\x01\xff"
    assert modsig.der_tlv(0x04, b"a" * 200)[:3] == b"\x04\x81\xc8"
    with pytest.raises(FormatError):
        modsig.der_read(b"\x04\x81\x05abcde")  # non-minimal length
    with pytest.raises(FormatError):
        modsig.der_read(b"\x04\x05abc")  # truncated
