"""Hypothesis on the smaller trust parsers: key URIs, .tpmkey files, CA state, CSRs."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import ConfigError, FormatError, SignatureError
from bastion.tpm.base import TpmKey
from bastion.trust.keys import KeyUri, tpm_key_from_bytes, tpm_key_to_bytes
from bastion.trust.pki import RevocationState, RevokedEntry, load_csr


@given(st.text(max_size=80))
def test_key_uri_parses_or_config_error(text: str) -> None:
    try:
        uri = KeyUri.parse(text)
    except ConfigError:
        return
    assert KeyUri.parse(str(uri)) == uri


@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=40))
def test_tpm_key_round_trip(public: bytes, private: bytes, name: bytes) -> None:
    key = TpmKey(public, private, name)
    assert tpm_key_from_bytes(tpm_key_to_bytes(key, "ecc-p256")) == key


@given(st.binary(max_size=300))
def test_tpm_key_arbitrary_bytes(data: bytes) -> None:
    try:
        tpm_key_from_bytes(data)
    except FormatError:
        return


entries = st.builds(
    RevokedEntry,
    st.integers(min_value=1, max_value=2**159),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.sampled_from([None, "key_compromise", "superseded"]),
)


@given(st.integers(min_value=0, max_value=2**31), st.lists(entries, max_size=5).map(tuple))
def test_revocation_state_round_trip(number: int, revoked: tuple[RevokedEntry, ...]) -> None:
    state = RevocationState(number, revoked)
    assert RevocationState.parse(state.to_bytes()) == state


@given(st.binary(max_size=300))
def test_revocation_state_arbitrary_bytes(data: bytes) -> None:
    try:
        RevocationState.parse(data)
    except FormatError:
        return


@given(
    st.binary(max_size=300)
    | st.binary(max_size=200).map(lambda b: b"-----BEGIN CERTIFICATE REQUEST-----\n" + b)
)
def test_csr_arbitrary_bytes(data: bytes) -> None:
    try:
        load_csr(data)
    except (FormatError, SignatureError):
        return
