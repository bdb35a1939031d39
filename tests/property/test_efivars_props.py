"""Hypothesis: EFI signature lists, EFI_TIME, auth2 headers and SignedData: round trip, fuzz."""

from __future__ import annotations

import datetime as dt
import functools
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats import efivars as ev
from bastion.formats.pkcs7_signed import SignedData

guids = st.builds(uuid.UUID, bytes=st.binary(min_size=16, max_size=16))
times = st.builds(
    ev.EfiTime,
    st.integers(1900, 9999),
    st.integers(1, 12),
    st.integers(1, 31),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999_999_999),
    st.one_of(st.integers(-1440, 1440), st.just(2047)),
    st.integers(0, 255),
)


@st.composite
def siglists(draw: st.DrawFn) -> ev.SignatureList:
    kind = draw(st.sampled_from(["x509", "sha256", "other"]))
    count = draw(st.integers(1, 4))
    if kind == "sha256":
        return ev.SignatureList.sha256(
            draw(guids), [draw(st.binary(min_size=32, max_size=32)) for _ in range(count)]
        )
    size = draw(st.integers(1, 40))
    entries = tuple(
        ev.SignatureData(draw(guids), draw(st.binary(min_size=size, max_size=size)))
        for _ in range(count if kind == "other" else 1)
    )
    if kind == "x509":
        return ev.SignatureList(ev.EFI_CERT_X509_GUID, entries)
    return ev.SignatureList(draw(guids), entries, draw(st.binary(max_size=8)))


@given(st.lists(siglists(), max_size=5))
def test_siglist_round_trip(lists: list[ev.SignatureList]) -> None:
    data = ev.encode_signature_lists(lists)
    assert ev.parse_signature_lists(data) == tuple(lists)
    assert ev.encode_signature_lists(ev.parse_signature_lists(data)) == data


@given(st.binary(max_size=300))
def test_siglist_arbitrary_bytes(data: bytes) -> None:
    try:
        lists = ev.parse_signature_lists(data)
    except FormatError:
        return
    assert ev.encode_signature_lists(lists) == data


@given(st.lists(siglists(), min_size=1, max_size=3), st.integers(0, 10_000), st.integers(0, 255))
def test_siglist_mutated(lists: list[ev.SignatureList], pos: int, value: int) -> None:
    raw = bytearray(ev.encode_signature_lists(lists))
    raw[pos % len(raw)] = value
    try:
        parsed = ev.parse_signature_lists(bytes(raw))
    except FormatError:
        return
    assert ev.encode_signature_lists(parsed) == bytes(raw)


@given(times)
def test_time_round_trip(t: ev.EfiTime) -> None:
    assert ev.EfiTime.parse(t.to_bytes()) == t


@given(times, st.binary(min_size=1, max_size=200), st.binary(max_size=200))
def test_auth_round_trip(t: ev.EfiTime, cert: bytes, data: bytes) -> None:
    auth = ev.AuthenticatedVariable(t, cert, data)
    assert ev.AuthenticatedVariable.parse(auth.to_bytes()) == auth


@given(st.binary(max_size=200))
def test_auth_arbitrary_bytes(data: bytes) -> None:
    try:
        auth = ev.AuthenticatedVariable.parse(data)
    except FormatError:
        return
    assert auth.to_bytes() == data


@given(st.binary(max_size=300))
def test_signed_data_arbitrary_bytes(data: bytes) -> None:
    try:
        sd = SignedData.parse(data)
    except FormatError:
        return
    assert isinstance(sd, SignedData)


@given(st.integers(1, 2**64), st.binary(min_size=1, max_size=300), st.booleans())
def test_signed_data_round_trip(serial: int, sig: bytes, attrs: bool) -> None:
    import dataclasses

    from cryptography.hazmat.primitives.serialization import Encoding

    from bastion.formats.modsig import der_tlv
    from bastion.formats.pkcs7_signed import OID_CONTENT_TYPE, OID_DATA, Attribute

    cert = _certificate()
    sd = SignedData.detached(
        certificate=cert.public_bytes(Encoding.DER),
        issuer=cert.issuer.public_bytes(),
        serial=serial,
        signature=sig,
    )
    if attrs:
        value = der_tlv(0x06, OID_DATA)
        raw = der_tlv(0x30, der_tlv(0x06, OID_CONTENT_TYPE) + der_tlv(0x31, value))
        si = dataclasses.replace(
            sd.signer_infos[0],
            signed_attributes=raw,
            attributes=(Attribute(OID_CONTENT_TYPE, (value,)),),
        )
        sd = dataclasses.replace(sd, signer_infos=(si,))
    again = SignedData.parse(sd.to_bytes())
    assert again == sd
    assert again.to_bytes() == sd.to_bytes()


@functools.cache
def _certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pkcs7 property")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
