"""Arbitrary bytes as an EK certificate: a refusal from the one exception tree, never
anything else (bastion.trust.ekcert)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import BastionError
from bastion.tpm.software import SoftwareTpm
from bastion.trust.ekcert import verify_ek_certificate

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ek(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return SoftwareTpm(Path(tmp_path_factory.mktemp("ek") / "tpm.state")).ek_public()


@settings(max_examples=200)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_are_refused_cleanly(ek: bytes, data: bytes) -> None:
    with pytest.raises(BastionError):
        verify_ek_certificate(data, ek, [], now=NOW)
