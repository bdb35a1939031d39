"""Property tests: the sealed API key parser gives a key or a BastionError, never else."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import AuthError, FormatError
from bastion.formats import enrollment as en

KEYS = en.derive_keys(b"\x07" * 32, "ch_prop")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", max_size=80), st.text(max_size=40))
def test_round_trip(api_key: str, device_id: str) -> None:
    assert en.open_api_key(KEYS, device_id, en.seal_api_key(KEYS, device_id, api_key)) == api_key


@given(st.binary(max_size=400))
def test_arbitrary_bytes(blob: bytes) -> None:
    with contextlib.suppress(FormatError, AuthError):
        en.open_api_key(KEYS, "dev", blob)
