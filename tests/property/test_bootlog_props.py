"""Hypothesis: any console text gives a report or FormatError, never anything else."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats import bootlog

_lines = st.sampled_from(
    [
        "BASTION: running",
        "BASTION: failed: x",
        "BASTION: eventlog begin",
        "BASTION: eventlog end",
        "BASTION: pcr sha256 7 00ff",
        "BASTION: root mounted a b c ro",
        "BASTION: quote attest /1RDRw==",
        "BASTION: quote signature ",
        "AAAA",
        "Access Denied",
        "[ 1.0] Kernel panic - x",
    ]
)


@given(st.lists(st.one_of(_lines, st.text(max_size=40)), max_size=30))
def test_console_text(lines: list[str]) -> None:
    with contextlib.suppress(FormatError):
        report = bootlog.parse("\n".join(lines))
        result = bootlog.outcome(report, timed_out=False)
        assert isinstance(bootlog.reason(report, result), str)
