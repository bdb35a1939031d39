"""Pure rollout rules: deterministic wave assignment and the wave decisions table."""

from __future__ import annotations

import pytest

from bastion.server.rollouts.plan import (
    BUCKETS,
    Decision,
    WaveCounts,
    WavePlan,
    assign,
    bucket,
    decide,
)

WAVES = [
    WavePlan(0, "canary", canary=True, tag="lab", success_percent=100, failure_percent=0),
    WavePlan(1, "named", devices=frozenset({"dev-named"})),
    WavePlan(2, "ten", percent=10),
    WavePlan(3, "forty", percent=40),
]


def test_assignment_is_deterministic_and_ordered() -> None:
    assert assign(WAVES, "r1", "dev-named", {"lab"}) == 0  # the first matching wave wins
    assert assign(WAVES, "r1", "dev-named", set()) == 1
    ids = [f"dev-{i:05d}" for i in range(5000)]
    first = [assign(WAVES, "r1", i, set()) for i in ids]
    assert first == [assign(WAVES, "r1", i, set()) for i in ids]  # same answer every time
    share = {w: first.count(w) / len(ids) for w in (2, 3, None)}
    assert 0.08 < share[2] < 0.12 and 0.37 < share[3] < 0.43 and 0.46 < share[None] < 0.54
    for device, wave in zip(ids, first, strict=True):
        b = bucket("r1", device)
        assert 0 <= b < BUCKETS
        assert wave == (2 if b < 1000 else 3 if b < 5000 else None)
    # another rollout shuffles the fleet differently
    assert first != [assign(WAVES, "r2", i, set()) for i in ids]


DECISIONS = {
    "empty canary waits": (WAVES[0], WaveCounts(), 0, Decision.WAIT),
    "empty wave advances": (WAVES[2], WaveCounts(), 0, Decision.ADVANCE),
    "canary all committed": (WAVES[0], WaveCounts(assigned=2, committed=2), 0, Decision.ADVANCE),
    "canary one fell back": (
        WAVES[0],
        WaveCounts(assigned=2, committed=1, fell_back=1),
        0,
        Decision.PAUSE,
    ),
    "acknowledged failure": (
        WAVES[0],
        WaveCounts(assigned=3, committed=2, fell_back=1),
        1,
        Decision.WAIT,
    ),
    "installed is not committed": (
        WAVES[0],
        WaveCounts(assigned=2, committed=1, installed=1),
        0,
        Decision.WAIT,
    ),
    "at threshold": (
        WavePlan(5, "w", percent=10, success_percent=90, failure_percent=10),
        WaveCounts(assigned=10, committed=9, failed=1),
        0,
        Decision.ADVANCE,
    ),
    "over threshold": (
        WavePlan(5, "w", percent=10, success_percent=90, failure_percent=10),
        WaveCounts(assigned=10, committed=8, failed=2),
        0,
        Decision.PAUSE,
    ),
}


@pytest.mark.parametrize("case", list(DECISIONS.values()), ids=list(DECISIONS))
def test_decisions(case: tuple[WavePlan, WaveCounts, int, Decision]) -> None:
    wave, counts, acknowledged, expected = case
    decision, why = decide(wave, counts, acknowledged)
    assert decision is expected
    if decision is Decision.PAUSE:
        assert f"{counts.bad} of {counts.assigned}" in why
