"""EFI signature lists, EFI_TIME, EFI_VARIABLE_AUTHENTICATION_2: layouts and negative cases."""

from __future__ import annotations

import datetime as dt
import functools
import struct
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from bastion.errors import FormatError, LimitError
from bastion.formats import efivars as ev
from bastion.formats.modsig import der_tlv
from bastion.formats.pkcs7_signed import OID_SIGNED_DATA, SignedData

OWNER = uuid.UUID("5a1c7e5a-0000-4000-8000-00000000c0de")
T = ev.EfiTime(2026, 1, 2, 3, 4, 5)


def test_guid_encoding_is_mixed_endian() -> None:
    assert ev.guid_bytes(ev.EFI_GLOBAL_VARIABLE).hex() == "61dfe48bca93d211aa0d00e098032b8c"
    assert ev.parse_guid(ev.guid_bytes(ev.EFI_CERT_X509_GUID)) == ev.EFI_CERT_X509_GUID
    assert ev.SECURE_BOOT_VARIABLES["db"] == ev.EFI_IMAGE_SECURITY_DATABASE


def test_x509_list_layout() -> None:
    cert = b"\x30\x03\x02\x01\x01"
    raw = ev.SignatureList.x509(OWNER, cert).to_bytes()
    assert raw[:16] == ev.EFI_CERT_X509_GUID.bytes_le
    assert struct.unpack_from("<III", raw, 16) == (28 + 16 + 5, 0, 16 + 5)
    assert raw[28:44] == OWNER.bytes_le and raw[44:] == cert


def test_sha256_list_and_concatenation() -> None:
    a = ev.SignatureList.sha256(OWNER, [bytes(32), b"\x01" * 32])
    b = ev.SignatureList.x509(OWNER, b"\x30\x00")
    data = ev.encode_signature_lists([a, b])
    assert struct.unpack_from("<III", data, 16) == (28 + 2 * 48, 0, 48)
    assert ev.parse_signature_lists(data) == (a, b)
    assert ev.parse_signature_lists(b"") == ()


def _list(list_size: int, header: int, sig_size: int, body: bytes) -> bytes:
    return ev.EFI_CERT_X509_GUID.bytes_le + struct.pack("<III", list_size, header, sig_size) + body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 27, "header truncated"),
        (_list(28 + 20, 0, 20, b"\x00" * 19), "only"),
        (_list(28 + 20, 0, 16, b"\x00" * 20), "expected more than 16"),
        (_list(28, 0, 20, b""), "positive multiple"),
        (_list(28 + 30, 0, 20, b"\x00" * 30), "positive multiple"),
        (_list(20, 0, 20, b"\x00" * 20), "ListSize 20 < 28"),
        (_list(28 + 4 + 20, 4, 20, b"\x00" * 24), "header must be empty"),
        (
            ev.EFI_CERT_SHA256_GUID.bytes_le + struct.pack("<III", 28 + 40, 0, 40) + bytes(40),
            "expected 32",
        ),
    ],
)
def test_siglist_negative(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        ev.parse_signature_lists(data)


def test_siglist_limits() -> None:
    with pytest.raises(LimitError):
        ev.parse_signature_lists(_list(28 + 70_000, 0, 70_000, bytes(70_000)))
    one = ev.SignatureList.sha256(OWNER, [bytes(32)]).to_bytes()
    with pytest.raises(LimitError, match="EFI_SIGNATURE_LISTs"):
        ev.parse_signature_lists(one * 257)


def test_efi_time() -> None:
    raw = T.to_bytes()
    assert raw.hex() == "ea07010203040500" + "00" * 8
    assert ev.EfiTime.parse(raw) == T and T.is_authentication_form
    when = dt.datetime(2026, 1, 2, 4, 4, 5, 123, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert ev.EfiTime.from_datetime(when) == T
    assert ev.EfiTime(2026, 1, 2, nanosecond=1) > T.__class__(2026, 1, 2)
    assert not ev.EfiTime(2026, 1, 2, timezone=60).is_authentication_form
    assert T.to_datetime() == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    for bad in (
        raw[:15],
        struct.pack("<HBBBBBBIhBB", 2026, 13, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        struct.pack("<HBBBBBBIhBB", 2026, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    ):
        with pytest.raises(FormatError):
            ev.EfiTime.parse(bad)
    with pytest.raises(FormatError, match="naive"):
        ev.EfiTime.from_datetime(dt.datetime(2026, 1, 1))
    with pytest.raises(FormatError, match="calendar"):
        ev.EfiTime(2026, 2, 31).to_datetime()
    assert (
        ev.EfiTime.parse(struct.pack("<HBBBBBBIhBB", 2026, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0)).month == 0
    )


def test_signable_bytes_layout() -> None:
    out = ev.signable_bytes("db", ev.EFI_IMAGE_SECURITY_DATABASE, 0x27, T, b"DATA")
    assert out == (
        "db".encode("utf-16-le")
        + ev.EFI_IMAGE_SECURITY_DATABASE.bytes_le
        + b"\x27\x00\x00\x00"
        + T.to_bytes()
        + b"DATA"
    )
    for name in ("", "a\0b", "x" * 129, "\ud800"):
        with pytest.raises(FormatError):
            ev.signable_bytes(name, ev.EFI_GLOBAL_VARIABLE, 0x27, T, b"")


def _auth(
    length: int, revision: int = 0x200, ctype: int = 0xEF1, guid: uuid.UUID | None = None
) -> bytes:
    g = guid or ev.EFI_CERT_TYPE_PKCS7_GUID
    return T.to_bytes() + struct.pack("<IHH", length, revision, ctype) + g.bytes_le


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_auth(30)[:39], "truncated"),
        (_auth(30, revision=0x100) + b"x" * 6, "wRevision"),
        (_auth(30, ctype=0x2) + b"x" * 6, "wCertificateType"),
        (_auth(30, guid=ev.EFI_CERT_X509_GUID) + b"x" * 6, "CertType"),
        (_auth(24), "no CertData"),
        (_auth(31) + b"x" * 6, "runs past"),
        (_auth(24 + 70_000), "limit"),
    ],
)
def test_auth_negative(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        ev.AuthenticatedVariable.parse(data)


def test_auth_round_trip_and_split() -> None:
    auth = ev.AuthenticatedVariable(T, b"\x30\x00", b"payload")
    raw = auth.to_bytes()
    assert struct.unpack_from("<I", raw, 16)[0] == 24 + 2
    assert auth.header_size == 16 + 24 + 2 and raw[auth.header_size :] == b"payload"
    assert ev.AuthenticatedVariable.parse(raw) == auth


@functools.cache
def _certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pkcs7 test")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _signed() -> SignedData:
    cert = _certificate()
    return SignedData.detached(
        certificate=cert.public_bytes(Encoding.DER),
        issuer=cert.issuer.public_bytes(),
        serial=7,
        signature=b"\x01" * 8,
    )


def test_signed_data_bare_form() -> None:
    raw = _signed().to_bytes()
    # edk2 wants a two-byte length and the SHA-256 OID at byte 13 of the bare SignedData
    assert raw[1] == 0x82
    assert raw[13:22] == bytes.fromhex("608648016503040201")
    assert SignedData.parse(raw) == _signed()
    wrapped = der_tlv(0x30, der_tlv(0x06, OID_SIGNED_DATA) + der_tlv(0xA0, raw))
    assert SignedData.parse(wrapped, allow_content_info=True) == _signed()
    with pytest.raises(FormatError):
        SignedData.parse(wrapped)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b + b"\x00",
        lambda b: b[:-1],
        lambda b: b"\x31" + b[1:],
        lambda b: b[:4] + b"\x04" + b[5:],  # version is not an INTEGER
    ],
)
def test_signed_data_negative(mutate: object) -> None:
    raw = _signed().to_bytes()
    with pytest.raises(FormatError):
        SignedData.parse(mutate(raw))  # type: ignore[operator]
