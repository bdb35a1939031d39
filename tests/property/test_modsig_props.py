"""Hypothesis: module trailer / SignedData parsers round-trip and fail only with FormatError."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats.modsig import (
    HASH_OIDS,
    MAGIC,
    CmsSignature,
    ModuleSignatureInfo,
    SignedModule,
    der_tlv,
)
from bastion.limits import MODSIG_MAX_SIG_SIZE

names = st.binary(max_size=60).map(lambda b: der_tlv(0x30, der_tlv(0x31, b)))
cms_objects = st.builds(
    CmsSignature,
    st.sampled_from(sorted(HASH_OIDS)),
    names,
    st.integers(min_value=-(2**159), max_value=2**160),
    st.binary(max_size=600),
)


@given(cms_objects)
def test_cms_round_trip(cms: CmsSignature) -> None:
    assert CmsSignature.parse(cms.to_bytes()) == cms


@given(st.binary(max_size=300), cms_objects)
def test_signed_module_round_trip(module: bytes, cms: CmsSignature) -> None:
    signed = SignedModule(module, cms.to_bytes())
    again = SignedModule.parse(signed.to_bytes())
    assert again == signed
    assert again.cms() == cms


@given(st.integers(min_value=1, max_value=MODSIG_MAX_SIG_SIZE))
def test_trailer_round_trip(n: int) -> None:
    info = ModuleSignatureInfo(n)
    assert ModuleSignatureInfo.parse(info.to_bytes()) == info


@given(st.binary(max_size=600))
def test_arbitrary_bytes_module(data: bytes) -> None:
    for blob in (data, data + MAGIC):
        try:
            SignedModule.parse(blob).cms()
        except FormatError:
            continue


@given(st.binary(max_size=600))
def test_arbitrary_bytes_cms(data: bytes) -> None:
    try:
        CmsSignature.parse(data)
    except FormatError:
        return


@given(cms_objects, st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_bit_flipped_cms_parses_or_formaterror(cms: CmsSignature, pos: int, bit: int) -> None:
    data = bytearray(cms.to_bytes())
    data[pos % len(data)] ^= 1 << bit
    try:
        CmsSignature.parse(bytes(data))
    except FormatError:
        return


@given(st.binary(min_size=12, max_size=12))
def test_arbitrary_trailer(data: bytes) -> None:
    try:
        ModuleSignatureInfo.parse(data)
    except FormatError:
        return
