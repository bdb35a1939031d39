"""UKI builder on a synthetic stub: layout, section contents, refusals."""

from __future__ import annotations

import itertools
import json

import pytest
from tests.pebuild import make_pe
from tests.unit.trust.conftest import make_key

from bastion.build.uki import UkiInputs, build_uki, with_pcr_signature
from bastion.errors import ConfigError, FormatError
from bastion.formats.pe import SCN_CNT_CODE, SCN_CNT_INITIALIZED_DATA, PeImage, WinCertificate
from bastion.formats.uki import SECTION_ORDER, uki_sections
from bastion.trust.keys import public_key_to_pem
from bastion.trust.pcr11 import pcr11_policy, predict_pcr11
from bastion.trust.signer import SignatureScheme, SoftwareSigner

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


def test_with_pcr_signature_adds_key_and_signature() -> None:
    signer = SoftwareSigner(make_key("rsa-2048", 0), SignatureScheme.RSA_PKCS1V15_SHA256)
    signed = with_pcr_signature(UkiInputs(linux=b"MZ k", cmdline=b"x"), signer, ["enter-initrd"])
    assert signed.pcrpkey == public_key_to_pem(signer.public_key())
    assert signed.pcrsig is not None
    entry = json.loads(signed.pcrsig)["sha256"][0]
    value = predict_pcr11(signed.sections(), "enter-initrd")  # .pcrpkey is measured
    assert entry["pol"] == pcr11_policy(value).hex()


PCR_REFUSED = {
    "pcrsig already given": UkiInputs(linux=b"k", pcrsig=b"{}"),
    "pcrpkey of another key": UkiInputs(
        linux=b"k", pcrpkey=public_key_to_pem(make_key("rsa-2048", 1).public_key())
    ),
}


@pytest.mark.parametrize("case", sorted(PCR_REFUSED))
def test_with_pcr_signature_refusals(case: str) -> None:
    signer = SoftwareSigner(make_key("rsa-2048", 0), SignatureScheme.RSA_PKCS1V15_SHA256)
    with pytest.raises(ConfigError):
        with_pcr_signature(PCR_REFUSED[case], signer)
