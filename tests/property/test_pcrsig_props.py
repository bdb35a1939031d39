"""Hypothesis: the .pcrsig parser returns entries or raises FormatError, nothing else."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.trust.pcr11 import parse_pcrsig

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        parse_pcrsig(data)


@settings(max_examples=50)
@given(json_values)
def test_arbitrary_json(value: object) -> None:
    with contextlib.suppress(FormatError):
        entries = parse_pcrsig(json.dumps({"sha256": value}).encode())
        assert all(set(e) == {"pcrs", "pkfp", "pol", "sig"} for e in entries)
