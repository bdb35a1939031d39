"""Kernel module signatures against sign-file vectors (tests/vectors/modsig)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

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


def _cert_of(key, skid: bool = True) -> x509.Certificate:  # type: ignore[no-untyped-def]
    import datetime as dt

    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "k")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if skid:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


@pytest.mark.parametrize(
    "make",
    [
        ed25519.Ed25519PrivateKey.generate,
        lambda: ec.generate_private_key(ec.SECP256K1()),  # a curve the kernel does not verify
    ],
    ids=["ed25519", "secp256k1"],
)
def test_sign_refuses_unsupported_keys(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FormatError):
        sign_module(b"mod", _cert_of(make()), lambda d: b"")


def _ec_sign(key, h: str):  # type: ignore[no-untyped-def]
    return lambda data: key.sign(data, ec.ECDSA(getattr(hashes, h.upper())()))


@pytest.mark.parametrize(
    ("curve", "h"),
    [(ec.SECP256R1(), "sha256"), (ec.SECP384R1(), "sha384"), (ec.SECP521R1(), "sha512")],
)
@pytest.mark.parametrize("key_id", [False, True])
def test_ecdsa_and_key_id_round_trip(curve, h: str, key_id: bool) -> None:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(curve)
    cert = _cert_of(key)
    signed = sign_module(b"module", cert, _ec_sign(key, h), h, use_key_id=key_id)
    verified = verify_module(signed, cert)
    cms = verified.cms()
    assert (cms.key_algorithm, cms.hash_name, cms.version) == ("ecdsa", h, 3 if key_id else 1)
    assert modsig.CmsSignature.parse(cms.to_bytes()) == cms


def test_rsa_key_id_round_trip() -> None:
    key = _key()
    cert = _cert_of(key)
    signed = sign_module(b"module", cert, _signer(key, "sha256"), use_key_id=True)
    assert verify_module(signed, cert).cms().subject_key_id == modsig.certificate_key_id(cert)


def test_key_id_negative_table() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert_of(key)
    signed = sign_module(b"module", cert, _ec_sign(key, "sha256"), use_key_id=True)
    # another key, a certificate without the extension, an RSA certificate
    other = _cert_of(ec.generate_private_key(ec.SECP256R1()))
    for wrong in (other, _cert_of(key, skid=False), _cert_of(_key())):
        with pytest.raises(SignatureError):
            verify_module(signed, wrong)
    with pytest.raises(FormatError, match="subjectKeyIdentifier"):
        sign_module(b"m", _cert_of(key, skid=False), _ec_sign(key, "sha256"), use_key_id=True)
    # an ECDSA signature claimed as RSA
    cms = SignedModule.parse(signed).cms()
    as_rsa = modsig.CmsSignature(cms.hash_name, b"", 0, cms.signature, "rsa", cms.subject_key_id)
    forged = b"module" + as_rsa.to_bytes()
    forged += modsig.ModuleSignatureInfo(len(as_rsa.to_bytes())).to_bytes() + modsig.MAGIC
    with pytest.raises(SignatureError):
        verify_module(forged, cert)


_SHA256 = bytes.fromhex("608648016503040201")


@pytest.mark.parametrize(
    ("oid", "name"),
    [
        (bytes.fromhex("2a864886f70d0204"), "md4"),
        (bytes.fromhex("2a864886f70d0205"), "md5"),
        (bytes.fromhex("2b0e03021a"), "sha1"),
    ],
)
def test_weak_hashes_refused_by_name(
    oid: bytes, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cms = CmsSignature("sha256", _cert().issuer.public_bytes(), 7, b"\x01" * 256)
    with monkeypatch.context() as m:  # encode the same SignedData with the weak digest OID
        m.setitem(modsig.HASH_OIDS, "sha256", oid)
        weak = cms.to_bytes()
    assert oid in weak
    with pytest.raises(FormatError, match=f"{name} is refused"):
        modsig.CmsSignature.parse(weak)


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
