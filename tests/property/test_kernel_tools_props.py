"""Hypothesis: what the linux platform parses from the kernel and its tools (verity
options, ``veritysetup status``, ``roothash=`` on /proc/cmdline) gives a value or a
FormatError (LimitError past the bound), never anything else."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats.uki import cmdline_root_hash
from bastion.storage.kernel_verity import CorruptionResponse, parse_options, parse_status

_words = st.sampled_from(
    ["", ",", "panic-on-corruption", "restart-on-corruption", "ignore-corruption", "eio"]
)


@given(st.lists(st.one_of(_words, st.text(max_size=20)), max_size=4))
def test_verity_options(words: list[str]) -> None:
    text = ",".join(words)
    with contextlib.suppress(FormatError):
        response = parse_options(text)
        assert isinstance(response, CorruptionResponse)
        assert parse_options(response.options) is response


@given(st.text(max_size=400))
def test_veritysetup_status(text: str) -> None:
    status = parse_status(text)
    assert not status.verified or status.active


@given(st.lists(st.one_of(st.just("roothash=" + "ab" * 32), st.text(max_size=70)), max_size=6))
def test_cmdline_root_hash(words: list[str]) -> None:
    with contextlib.suppress(FormatError):
        found = cmdline_root_hash(" ".join(words))
        assert found is None or len(found) == 32
