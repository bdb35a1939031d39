"""UKI builder on a synthetic stub: layout, section contents, refusals."""

from __future__ import annotations

import itertools

import pytest
from tests.pebuild import make_pe

from bastion.build.uki import SECTION_ORDER, UkiInputs, build_uki, uki_sections
from bastion.errors import FormatError
from bastion.formats.pe import SCN_CNT_CODE, SCN_CNT_INITIALIZED_DATA, PeImage, WinCertificate

STUB = make_pe(((".text", b"\xc3" * 300), (".sbat", b"sbat,1,x\n")), spare_headers=8)
INPUTS = UkiInputs(
    linux=make_pe(),
    osrel=b"ID=bastion\n",
    cmdline=b"quiet\0",
    initrd=b"\x07\x07\x01" * 999,
    pcrpkey=b"-----BEGIN PUBLIC KEY-----\n",
    pcrsig=b'{"sha256":[]}',
)


def test_layout_and_contents() -> None:
    uki = PeImage.parse(build_uki(STUB, INPUTS))
    names = [s.name for s in uki.sections]
    assert names == [
        ".text",
        ".sbat",
        ".osrel",
        ".cmdline",
        ".pcrpkey",
        ".pcrsig",
        ".initrd",
        ".linux",
    ]
    assert uki_sections(uki.data) == {k: v for k, v in INPUTS.sections().items()}
    for s in uki.sections[2:]:
        assert s.virtual_address % uki.section_alignment == 0
        assert s.pointer_to_raw_data % uki.file_alignment == 0
        kind = SCN_CNT_CODE if s.name == ".linux" else SCN_CNT_INITIALIZED_DATA
        assert s.characteristics & (SCN_CNT_CODE | SCN_CNT_INITIALIZED_DATA) == kind
    # memory ranges do not overlap and SizeOfImage covers the last one
    spans = sorted((s.virtual_address, s.virtual_address + s.virtual_size) for s in uki.sections)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert uki.size_of_image >= spans[-1][1]
    assert uki.section(".sbat") is not None  # the stub's own sections stay
    uki.authenticode_digest()


def test_empty_sections_are_left_out() -> None:
    uki = build_uki(STUB, UkiInputs(linux=b"kernel", cmdline=b"", osrel=None))
    assert list(uki_sections(uki)) == [".linux"]


def test_order_constant_matches_inputs() -> None:
    assert tuple(INPUTS.sections()) == tuple(n for n in SECTION_ORDER if n != ".uname")


REFUSED = {
    "no kernel": (STUB, UkiInputs(linux=b"")),
    "signed stub": (PeImage.parse(STUB).with_certificates([WinCertificate(b"x")]), INPUTS),
    "stub already a UKI": (build_uki(STUB, INPUTS), INPUTS),
    "not an EFI application": (STUB[: 0x80 + 24 + 68] + b"\x03" + STUB[0x80 + 24 + 69 :], INPUTS),
    "not a PE": (b"MZ" + bytes(100), INPUTS),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals(case: str) -> None:
    stub, inputs = REFUSED[case]
    with pytest.raises(FormatError):
        build_uki(stub, inputs)
