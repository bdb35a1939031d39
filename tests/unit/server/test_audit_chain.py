"""The audit chain's verification over in-memory entries (no database)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from bastion.errors import TamperError
from bastion.server.audit.service import GENESIS, entry_hash, verify_entries


@dataclasses.dataclass
class Entry:
    seq: int
    at: dt.datetime
    actor: str
    event: str
    org_id: str | None
    details: str
    prev_hash: str
    hash: str


def chain(n: int) -> list[Entry]:
    out: list[Entry] = []
    prev = GENESIS
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i in range(1, n + 1):
        fields = dict(seq=i, at=t, actor=f"user:{i}", event="e", org_id="o", details="{}")
        digest = entry_hash(**fields, prev=prev)
        out.append(Entry(**fields, prev_hash=prev, hash=digest))
        prev = digest
    return out


def test_intact_chain() -> None:
    entries = chain(4)
    report = verify_entries(entries, 4, entries[-1].hash)
    assert report.entries == 4


def _swap(e: list[Entry]) -> list[Entry]:
    e[1], e[2] = e[2], e[1]
    return e


CASES = {
    "edited details": lambda e: [
        dataclasses.replace(x, details='{"x":1}') if x.seq == 2 else x for x in e
    ],
    "edited org": lambda e: [dataclasses.replace(x, org_id=None) if x.seq == 3 else x for x in e],
    "removed": lambda e: [x for x in e if x.seq != 2],
    "swapped": _swap,
    "truncated": lambda e: e[:-1],
    "duplicated": lambda e: [*e, e[-1]],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tamper_table(case: str) -> None:
    entries = chain(4)
    head = entries[-1].hash
    with pytest.raises(TamperError):
        verify_entries(CASES[case](list(entries)), 4, head)
