"""Hypothesis: cpio round trip, and arbitrary bytes give entries or FormatError."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats import cpio
from bastion.formats.cpio import CpioEntry

_names = st.text(alphabet="abcxyz_-.0", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)


@st.composite
def entries(draw: st.DrawFn) -> list[CpioEntry]:
    names = draw(st.lists(_names, unique=True, max_size=6))
    out = []
    for name in names:
        kind = draw(st.sampled_from(["file", "dir", "link"]))
        if kind == "file":
            out.append(
                CpioEntry.file(name, draw(st.binary(max_size=64)), draw(st.integers(0, 0o777)))
            )
        elif kind == "dir":
            out.append(CpioEntry.directory(name))
        else:
            out.append(CpioEntry.symlink(name, draw(st.text(min_size=1, max_size=20))))
    return out


@given(entries())
def test_round_trip(items: list[CpioEntry]) -> None:
    assert cpio.parse(cpio.archive(items)) == tuple(items)


@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        assert isinstance(cpio.parse(data), tuple)


@given(entries(), st.integers(0, 2000), st.integers(0, 255))
def test_mutated_archives(items: list[CpioEntry], pos: int, value: int) -> None:
    data = bytearray(cpio.archive(items))
    data[pos % len(data)] = value
    with contextlib.suppress(FormatError):
        cpio.parse(bytes(data))
