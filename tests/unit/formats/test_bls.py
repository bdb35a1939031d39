"""BLS entry names with boot counters: parse, format, boot/bless/bad rules, refusals."""

from __future__ import annotations

import pytest

from bastion.errors import FormatError, LimitError
from bastion.formats import bls
from bastion.formats.bls import EntryName

PARSED = [
    ("bastion.efi", EntryName("bastion", ".efi")),
    ("bastion+3.efi", EntryName("bastion", ".efi", 3)),
    ("bastion+3-0.efi", EntryName("bastion", ".efi", 3, 0)),
    ("bastion+0-3.conf", EntryName("bastion", ".conf", 0, 3)),
    ("linux-6.1+deb12.efi", EntryName("linux-6.1+deb12", ".efi")),  # '+' in the name
    ("linux-6.1+deb12+2-1.efi", EntryName("linux-6.1+deb12", ".efi", 2, 1)),
    ("a+.conf", EntryName("a+", ".conf")),
    ("a+1-.efi", EntryName("a+1-", ".efi")),  # not a counter: the '+' is part of the name
    ("a+-1.efi", EntryName("a+-1", ".efi")),
]


@pytest.mark.parametrize(("filename", "entry"), PARSED, ids=[p[0] for p in PARSED])
def test_parse_and_format(filename: str, entry: EntryName) -> None:
    assert bls.parse(filename) == entry
    assert entry.to_string() == filename


def test_boot_decrements_left_and_counts_done() -> None:
    name = bls.parse("bastion+3-0.efi")
    steps = [name]
    for _ in range(4):
        steps.append(steps[-1].booted())
    assert [s.to_string() for s in steps] == [
        "bastion+3-0.efi",
        "bastion+2-1.efi",
        "bastion+1-2.efi",
        "bastion+0-3.efi",
        "bastion+0-3.efi",  # no tries left: bad, not renamed again
    ]
    assert steps[-1].bad and not steps[0].bad
    assert bls.parse("bastion+3.efi").booted().to_string() == "bastion+2-1.efi"


def test_bless_and_bad() -> None:
    name = bls.parse("bastion+1-2.efi")
    assert name.blessed().to_string() == "bastion.efi"
    assert not name.blessed().counting
    assert name.marked_bad().to_string() == "bastion+0-2.efi"
    assert bls.parse("bastion+3.efi").marked_bad().to_string() == "bastion+0-0.efi"
    # an entry that is not being assessed is never renamed by a boot
    assert bls.parse("bastion.efi").booted().to_string() == "bastion.efi"


BAD_NAMES = [
    ("no suffix", "bastion", FormatError),
    ("other suffix", "bastion.img", FormatError),
    ("empty name", ".efi", FormatError),
    ("empty name with counter", "+3-0.efi", FormatError),
    ("path", "EFI/Linux/bastion.efi", FormatError),
    ("backslash", "EFI\\bastion.efi", FormatError),
    ("control character", "bas\ttion.efi", FormatError),
    ("huge counter", "bastion+99999999999.efi", LimitError),
    ("counter over the bound", "bastion+4294967296-0.efi", LimitError),
    ("name too long", "x" * 300 + ".efi", LimitError),
    ("lone surrogate", "a\udc80.efi", FormatError),
]


@pytest.mark.parametrize(("case", "filename", "error"), BAD_NAMES, ids=[b[0] for b in BAD_NAMES])
def test_refused_names(case: str, filename: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        bls.parse(filename)


BAD_ENTRIES = [
    ("done without left", dict(name="a", left=None, done=1), FormatError),
    ("negative", dict(name="a", left=-1), LimitError),
    ("name reads as counter", dict(name="a+3"), FormatError),
    ("name reads as counter 2", dict(name="a+3-1", left=2), FormatError),
]


@pytest.mark.parametrize(("case", "fields", "error"), BAD_ENTRIES, ids=[b[0] for b in BAD_ENTRIES])
def test_refused_entries(case: str, fields: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        EntryName(**fields)  # type: ignore[arg-type]
