"""Boot containers: canonical encoding, unit sections, negative cases."""

from __future__ import annotations

import json

import pytest

from bastion.errors import FormatError, LimitError
from bastion.formats import bootunit as bu


def _unit(**kw: object) -> bu.BootUnit:
    base: dict[str, object] = dict(
        linux=b"KERNEL" * 10,
        osrel=b'ID=bastion\nVERSION_ID="1"\n',
        cmdline=b"console=ttyS0 bastion.verity=ab bastion.slot=a",
        initrd=b"INITRD",
        security_version=3,
        modcert=b"CERT",
        veritycert=b"VCERT",
        modules=(("m1.ko", b"mod1"),),
    )
    base.update(kw)
    return bu.BootUnit(**base)  # type: ignore[arg-type]


def test_unit_round_trip() -> None:
    unit = _unit()
    assert bu.parse_unit(unit.to_bytes()) == unit
    assert bu.parse_unit(_unit(modules=()).to_bytes()) == _unit(modules=())


def test_canonical_section_order() -> None:
    names = bu.parse(_unit().to_bytes()).names()
    assert names == bu.UNIT_ORDER


def test_cmdline_params() -> None:
    assert _unit().cmdline_params()["bastion.verity"] == "ab"


def test_statement_names_every_section() -> None:
    doc = json.loads(bu.unit_statement(_unit(), "a", "1.0"))
    assert set(doc["sections"]) == set(bu.UNIT_ORDER)
    assert doc["security_version"] == 3 and doc["slot"] == "a"


def test_loader_round_trip() -> None:
    stage = bu.LoaderStage("1.0", b"-----BEGIN PUBLIC KEY-----\n")
    assert bu.parse_loader(stage.to_bytes()) == stage


@pytest.mark.parametrize("cut", [1, 7, 8, 30])
def test_truncation_refused(cut: int) -> None:
    raw = _unit().to_bytes()
    with pytest.raises(FormatError):
        bu.parse_unit(raw[:-cut])


def test_trailing_bytes_refused() -> None:
    with pytest.raises(FormatError, match="trailing"):
        bu.parse_unit(_unit().to_bytes() + bytes(8))


def test_wrong_kind_refused() -> None:
    raw = bu.LoaderStage("1", b"k").to_bytes()
    with pytest.raises(FormatError, match="expected unit"):
        bu.parse_unit(raw)


def test_bad_svn_refused() -> None:
    sections = list(_unit().sections())
    sections[4] = (".svn", b"-1")
    raw = bu.Container(bu.Kind.UNIT, tuple(sections)).to_bytes()
    with pytest.raises(FormatError, match="svn"):
        bu.parse_unit(raw)


def test_section_order_enforced() -> None:
    sections = list(_unit().sections())
    sections[0], sections[1] = sections[1], sections[0]
    raw = bu.Container(bu.Kind.UNIT, tuple(sections)).to_bytes()
    with pytest.raises(FormatError, match="sections"):
        bu.parse_unit(raw)


def test_entry_count_limit() -> None:
    raw = bytearray(bu.Container(bu.Kind.ARCHIVE, ()).to_bytes())
    raw[12:16] = (10**6).to_bytes(4, "little")
    with pytest.raises(LimitError):
        bu.parse(bytes(raw))


def test_duplicate_names_refused() -> None:
    with pytest.raises(FormatError):
        bu.Container(bu.Kind.ARCHIVE, (("a", b""), ("a", b"x"))).to_bytes()


def test_verity_signature_round_trip_and_padding() -> None:
    sig = bu.VeritySignature(bytes(range(32)), b"\x30\x03\x02\x01\x01", b"\xaa" * 32)
    raw = sig.to_bytes()
    assert len(raw) % 4096 == 0 and raw.startswith(b'{"rootHash":"000102')
    assert bu.parse_verity_signature(raw) == sig


@pytest.mark.parametrize(
    "raw",
    [
        b'{"rootHash":"00","signature":"AA=="}',  # root hash too short
        b'{"rootHash":"' + b"AB" * 32 + b'","signature":"AA=="}',  # upper-case hex
        b'{"rootHash":"' + b"ab" * 32 + b'","signature":"%%%"}',  # bad base64
        b'{"rootHash":"' + b"ab" * 32 + b'"}',  # no signature
        b'{"rootHash":"' + b"ab" * 32 + b'","signature":"AA=="}\0\0x',  # bytes after the NULs
        b"[1]",
        b"not json",
    ],
)
def test_verity_signature_negative(raw: bytes) -> None:
    with pytest.raises(FormatError):
        bu.parse_verity_signature(raw)
