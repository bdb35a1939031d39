"""PE/COFF codec: headers, sections, certificate table, Authenticode hash, rewrites."""

from __future__ import annotations

import hashlib
import struct

import pytest
from tests.pebuild import make_pe

from bastion.errors import FormatError, LimitError
from bastion.formats.pe import (
    SCN_CNT_CODE,
    NewSection,
    PeImage,
    WinCertificate,
    add_sections,
    parse_certificate_table,
)
from bastion.limits import PE_MAX_SECTIONS


def _manual_digest(data: bytes, cert_table_start: int | None = None) -> bytes:
    """The Authenticode hash written out step by step for the synthetic layout."""
    opt = 0x80 + 24
    checksum = opt + 64
    cert_dir = opt + 112 + 8 * 4
    headers = struct.unpack_from("<I", data, opt + 60)[0]
    end = len(data) if cert_table_start is None else cert_table_start
    h = hashlib.sha256()
    h.update(data[:checksum] + data[checksum + 4 : cert_dir] + data[cert_dir + 8 : headers])
    h.update(data[headers:end])  # sections are contiguous in file order, then trailing data
    return h.digest()


def test_parse_fields() -> None:
    img = PeImage.parse(make_pe())
    assert img.magic == 0x20B
    assert img.subsystem == 10
    assert [s.name for s in img.sections] == [".text", ".data"]
    assert img.section_data(img.sections[1]) == b"D" * 700
    assert img.sections[1].size_of_raw_data == 0x400
    assert img.certificates == ()
    assert img.checksum == 0x1234ABCD


def test_digest_skips_checksum_and_cert_entry() -> None:
    data = make_pe(trailing=b"tail")
    img = PeImage.parse(data)
    assert img.authenticode_digest() == _manual_digest(data)
    patched = bytearray(data)
    struct.pack_into("<I", patched, 0x80 + 24 + 64, 0)  # checksum is not hashed
    assert PeImage.parse(bytes(patched)).authenticode_digest() == img.authenticode_digest()
    patched[-1] ^= 1  # trailing data is
    assert PeImage.parse(bytes(patched)).authenticode_digest() != img.authenticode_digest()


def test_digest_hashes_sections_in_file_order() -> None:
    data = bytearray(make_pe())
    table = 0x80 + 24 + 240
    first, second = bytes(data[table : table + 40]), bytes(data[table + 40 : table + 80])
    data[table : table + 80] = second + first  # section table order differs from file order
    swapped = PeImage.parse(bytes(data))
    assert [s.name for s in swapped.sections] == [".data", ".text"]
    assert swapped.authenticode_digest() == _manual_digest(bytes(data))


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
def test_digest_algorithms(hash_name: str) -> None:
    img = PeImage.parse(make_pe())
    assert len(img.authenticode_digest(hash_name)) == hashlib.new(hash_name).digest_size


def test_certificate_table_round_trip_keeps_digest() -> None:
    img = PeImage.parse(make_pe(trailing=b"abc"))  # 3 bytes: the table needs 8-byte padding
    certs = [WinCertificate(b"\x30\x03\x02\x01\x01"), WinCertificate(b"x" * 16)]
    signed = PeImage.parse(img.with_certificates(certs))
    assert [c.certificate for c in signed.certificates] == [c.certificate for c in certs]
    assert signed.security_directory.address % 8 == 0
    assert signed.authenticode_digest() == img.prepared_for_signing().authenticode_digest()
    assert signed.authenticode_digest() == _manual_digest(
        signed.data, signed.security_directory.address
    )
    unsigned = PeImage.parse(signed.with_certificates([]))
    assert unsigned.certificates == ()
    assert unsigned.authenticode_digest() == signed.authenticode_digest()


def test_certificate_table_unpadded_length_as_sbsign_writes() -> None:
    entry = struct.pack("<IHH", 8 + 5, 0x200, 2) + b"12345" + b"\0\0\0"
    entry += struct.pack("<IHH", 8 + 1, 0x200, 2) + b"6" + bytes(7)
    assert [c.certificate for c in parse_certificate_table(entry)] == [b"12345", b"6"]


def _with_cert_dir(data: bytes, offset: int, size: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<II", out, 0x80 + 24 + 112 + 32, offset, size)
    return bytes(out)


def _bad(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


GOOD = make_pe()
SIGNED = PeImage.parse(GOOD).with_certificates([WinCertificate(b"sig" * 10)])
OPT = 0x80 + 24

NEGATIVE = {
    "empty": b"",
    "no MZ": b"ZM" + GOOD[2:],
    "e_lfanew past end": _bad(GOOD, 0x3C, "<I", len(GOOD)),
    "no PE signature": _bad(GOOD, 0x80, "<I", 0),
    "bad optional magic": _bad(GOOD, OPT, "<H", 0x30B),
    "optional header too short": _bad(GOOD, 0x80 + 4 + 16, "<H", 100),
    "too many directories": _bad(GOOD, OPT + 108, "<I", 17),
    "directories past optional header": _bad(GOOD, OPT + 108, "<I", 16)
    and _bad(GOOD, 0x80 + 4 + 16, "<H", 112 + 8 * 15),
    "file alignment not a power of two": _bad(GOOD, OPT + 36, "<I", 0x300),
    "section table past headers": _bad(GOOD, 0x80 + 6, "<H", 50),
    "headers past file": _bad(GOOD, OPT + 60, "<I", len(GOOD) + 1),
    "section raw data past file": _bad(GOOD, OPT + 240 + 40 + 16, "<I", 0x10000),
    "section in headers": _bad(GOOD, OPT + 240 + 20, "<I", 0),
    "cert table truncated": SIGNED[:-3],
    "cert table with trailing data": SIGNED + b"\0" * 8,
    "cert table unaligned": _with_cert_dir(GOOD + b"\0" * 20, len(GOOD) + 4, 16),
    "cert entry length too big": _bad(SIGNED, len(SIGNED) - 40, "<I", 1000),
    "cert entry length below header": _bad(SIGNED, len(SIGNED) - 40, "<I", 4),
    "cert table over limit": _with_cert_dir(GOOD, len(GOOD), 2 * 1024 * 1024),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_malformed_images_raise_format_error(case: str) -> None:
    with pytest.raises(FormatError):
        PeImage.parse(NEGATIVE[case])


def test_too_many_sections_is_a_limit_error() -> None:
    with pytest.raises(LimitError):
        PeImage.parse(_bad(GOOD, 0x80 + 6, "<H", PE_MAX_SECTIONS + 1))


def test_too_many_certificates_is_a_limit_error() -> None:
    table = WinCertificate(b"s").to_bytes() * 17
    with pytest.raises(LimitError):
        parse_certificate_table(table)


AMBIGUOUS = {
    "gap between sections": _bad(GOOD, OPT + 240 + 40 + 20, "<I", 0x800) + bytes(0x200),
    "overlapping sections": _bad(GOOD, OPT + 240 + 40 + 20, "<I", 0x400),
    "no certificate directory": _bad(make_pe(n_dirs=4), 0x80 + 4 + 16, "<H", 112 + 8 * 4),
}


@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
def test_ambiguous_authenticode_layouts_are_refused(case: str) -> None:
    img = PeImage.parse(AMBIGUOUS[case])
    with pytest.raises(FormatError):
        img.authenticode_digest()


def test_unknown_hash_is_refused() -> None:
    with pytest.raises(FormatError):
        PeImage.parse(GOOD).authenticode_digest("md5")


def test_add_sections_placement() -> None:
    img = PeImage.parse(make_pe())
    out = PeImage.parse(
        add_sections(
            img,
            [NewSection(".osrel", b"ID=test\n"), NewSection(".linux", b"K" * 5000, SCN_CNT_CODE)],
        )
    )
    names = [s.name for s in out.sections]
    assert names == [".text", ".data", ".osrel", ".linux"]
    osrel, linux = out.sections[2], out.sections[3]
    assert out.section_data(osrel) == b"ID=test\n"
    assert out.section_data(linux) == b"K" * 5000
    assert osrel.virtual_address == 0x3000  # after .data (0x2000 + 700 rounded to 0x1000)
    assert linux.virtual_address == 0x4000
    assert osrel.pointer_to_raw_data % 0x200 == 0 and linux.raw_end == len(out.data)
    assert out.size_of_image == 0x4000 + 0x2000
    assert out.checksum == 0
    out.authenticode_digest()  # contiguous: hashable


def test_add_sections_drops_trailing_symbol_table() -> None:
    symbols = bytes(18 * 2) + struct.pack("<I", 4)
    data = bytearray(make_pe(trailing=symbols))
    struct.pack_into("<II", data, 0x80 + 12, len(data) - len(symbols), 2)
    out = PeImage.parse(add_sections(PeImage.parse(bytes(data)), [NewSection(".a", b"1")]))
    assert out.pointer_to_symbol_table == 0 and out.number_of_symbols == 0
    assert symbols not in out.data[-0x400:]


ADD_NEGATIVE = {
    "duplicate name": [NewSection(".data", b"x")],
    "no header room": [NewSection(f".s{i}", b"x") for i in range(40)],
}


@pytest.mark.parametrize("case", sorted(ADD_NEGATIVE))
def test_add_sections_refusals(case: str) -> None:
    with pytest.raises(FormatError):
        add_sections(PeImage.parse(GOOD), ADD_NEGATIVE[case])


def test_add_sections_refuses_signed_image() -> None:
    with pytest.raises(FormatError):
        add_sections(PeImage.parse(SIGNED), [NewSection(".a", b"1")])


@pytest.mark.parametrize("name", ["", ".toolongname", ".a\0b", ".é"])
def test_bad_section_names(name: str) -> None:
    with pytest.raises(FormatError):
        NewSection(name, b"")
