"""Hypothesis: BLS entry names round-trip; the boot/bless rules keep their invariants."""

from __future__ import annotations

import contextlib

from hypothesis import assume, given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats import bls
from bastion.formats.bls import EntryName

_counts = st.integers(0, 2**32 - 1)


@st.composite
def entries(draw: st.DrawFn) -> EntryName:
    name = draw(st.text(alphabet="abcz019.-_+~", min_size=1, max_size=30))
    left = draw(st.one_of(st.none(), _counts))
    done = None if left is None else draw(st.one_of(st.none(), _counts))
    try:
        return EntryName(name, draw(st.sampled_from(bls.SUFFIXES)), left, done)
    except FormatError:
        assume(False)
        raise


@given(entries())
def test_round_trip(entry: EntryName) -> None:
    assert bls.parse(entry.to_string()) == entry


@given(entries())
def test_boot_rules(entry: EntryName) -> None:
    after = entry.booted()
    assert after.name == entry.name and after.suffix == entry.suffix
    if entry.left:
        assert after.left == entry.left - 1
        assert after.done == min((entry.done or 0) + 1, 2**32 - 1)
    else:
        assert after == entry
    assert not entry.blessed().counting
    assert entry.marked_bad().bad


@given(st.text(max_size=60))
def test_arbitrary_names(text: str) -> None:
    with contextlib.suppress(FormatError):
        entry = bls.parse(text)
        assert bls.parse(entry.to_string()) == entry
