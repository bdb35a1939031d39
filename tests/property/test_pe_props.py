"""Hypothesis: the PE codec and Authenticode parser accept bytes or raise FormatError only."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.pebuild import make_pe

from bastion.errors import FormatError
from bastion.formats.pe import PeImage, WinCertificate
from bastion.trust.authenticode import AuthenticodeSignature

BASE = PeImage.parse(make_pe(trailing=b"t")).with_certificates([WinCertificate(b"\x30\x00")])


def _parse_and_hash(data: bytes) -> None:
    try:
        img = PeImage.parse(data)
        img.authenticode_digest()
        for cert in img.certificates:
            AuthenticodeSignature.parse(cert.certificate)
    except FormatError:
        pass


@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    _parse_and_hash(data)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 255)), max_size=8))
def test_mutated_image(edits: list[tuple[int, int]]) -> None:
    data = bytearray(BASE)
    for at, value in edits:
        data[at] = value
    _parse_and_hash(bytes(data))


@given(st.binary(max_size=2048))
def test_arbitrary_signature_bytes(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        AuthenticodeSignature.parse(data)


@given(st.lists(st.binary(max_size=40), max_size=5))
def test_certificate_table_round_trip(blobs: list[bytes]) -> None:
    img = PeImage.parse(make_pe())
    again = PeImage.parse(img.with_certificates([WinCertificate(b) for b in blobs]))
    assert [c.certificate for c in again.certificates] == blobs
    assert again.authenticode_digest() == img.authenticode_digest()
