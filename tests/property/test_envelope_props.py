"""Hypothesis: the envelope parser round-trips and never fails but with FormatError."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.trust.envelope import Envelope, EnvelopeSignature, parse_envelope

types = st.text(min_size=1, max_size=40).filter(lambda t: 0 < len(t.encode()) <= 256)
sigs = st.builds(EnvelopeSignature, st.text(max_size=70), st.binary(max_size=80))
envelopes = st.builds(
    Envelope, types, st.binary(max_size=300), st.lists(sigs, max_size=5).map(tuple)
)


@given(envelopes)
def test_round_trip(env: Envelope) -> None:
    assert parse_envelope(env.to_bytes()) == env


@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        env = parse_envelope(data)
    except FormatError:
        return
    assert isinstance(env, Envelope)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=60)  # recursive JSON generation is slow; the bytes test covers volume
@given(
    st.dictionaries(
        st.sampled_from(["payload", "payloadType", "signatures", "keyid", "sig", "x"]),
        json_values | st.lists(st.dictionaries(st.sampled_from(["keyid", "sig"]), json_values)),
        max_size=4,
    )
)
def test_arbitrary_json_objects(doc: dict[str, object]) -> None:
    try:
        env = parse_envelope(json.dumps(doc).encode())
    except FormatError:
        return
    assert isinstance(env, Envelope)
