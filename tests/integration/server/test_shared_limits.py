"""Rate limits and the login delay shared in the database: two "processes" (two apps'
databases, separate engines and connections) on one database enforce one limit, exactly
as one process would; racing threads never both take the last token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion import limits
from bastion.errors import RateLimitError
from bastion.server.auth.ratelimit import (
    SharedLoginDelay,
    SharedRateLimiter,
    counter_key,
)
from bastion.server.db.engine import Database


class Wall:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def two_dbs(db_url: str, tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    first = Database(db_url)
    first.upgrade()
    second = Database(db_url)
    yield first, second
    first.dispose()
    second.dispose()


def _hits(limiter: SharedRateLimiter, key: str) -> bool:
    try:
        limiter.hit(key)
    except RateLimitError:
        return False
    return True


def test_alternating_processes_share_one_bucket(two_dbs: tuple[Database, Database]) -> None:
    wall = Wall()
    a = SharedRateLimiter(two_dbs[0], "t", 0.5, 5, wall)
    b = SharedRateLimiter(two_dbs[1], "t", 0.5, 5, wall)
    results = [_hits(a if i % 2 else b, "addr:1") for i in range(12)]
    assert results == [True] * 5 + [False] * 7
    with pytest.raises(RateLimitError, match=r"shared by every server process; retry in 2\.0 s"):
        a.hit("addr:1")
    assert _hits(b, "addr:2")  # other keys are untouched
    wall.t += 2.0  # one token back at 0.5/s
    assert _hits(a, "addr:1")
    assert not _hits(b, "addr:1")


def test_leases_never_exceed_the_shared_bucket(two_dbs: tuple[Database, Database]) -> None:
    wall = Wall()
    a = SharedRateLimiter(two_dbs[0], "api", 0.001, 6, wall, lease=3)
    b = SharedRateLimiter(two_dbs[1], "api", 0.001, 6, wall, lease=3)
    results = [_hits(a if i % 2 else b, "user:x") for i in range(10)]
    assert results.count(True) == 6
    assert not _hits(a, "user:x")
    assert not _hits(b, "user:x")


def test_try_hit_spends_only_this_process_lease(two_dbs: tuple[Database, Database]) -> None:
    """The answer cache's no-I/O hit (ADR 0044): tokens from the lease, never the table."""
    wall = Wall()
    a = SharedRateLimiter(two_dbs[0], "api", 0.001, 6, wall, lease=3)
    b = SharedRateLimiter(two_dbs[1], "api", 0.001, 6, wall, lease=3)
    assert not a.try_hit("device:x")  # no lease yet: only the full path may ask the table
    assert _hits(a, "device:x")  # leases 3, spends 1
    assert a.try_hit("device:x") and a.try_hit("device:x")
    assert not a.try_hit("device:x")  # lease spent
    assert _hits(b, "device:x") and b.try_hit("device:x") and b.try_hit("device:x")
    assert not _hits(a, "device:x")  # the 6 tokens are gone, whichever way they went


def test_a_lease_falls_back_to_single_tokens(two_dbs: tuple[Database, Database]) -> None:
    wall = Wall()
    a = SharedRateLimiter(two_dbs[0], "api", 0.001, 5, wall, lease=4)
    b = SharedRateLimiter(two_dbs[1], "api", 0.001, 5, wall, lease=4)
    assert _hits(a, "k")  # leased 4, 1 left in the shared bucket
    assert _hits(b, "k")  # lease of 4 refused, the single token taken
    assert not _hits(b, "k")
    assert [_hits(a, "k") for _ in range(4)] == [True, True, True, False]


def test_racing_threads_take_exactly_the_burst(two_dbs: tuple[Database, Database]) -> None:
    wall = Wall()
    limiters = [SharedRateLimiter(db, "race", 0.0001, 10, wall) for db in two_dbs]
    barrier = threading.Barrier(8)
    wins: list[bool] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        barrier.wait()
        for _ in range(4):
            ok = _hits(limiters[n % 2], "addr:race")
            with lock:
                wins.append(ok)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 32
    assert wins.count(True) == 10


def test_reset_is_seen_by_every_process(two_dbs: tuple[Database, Database]) -> None:
    wall = Wall()
    a = SharedRateLimiter(two_dbs[0], "t", 0.001, 1, wall)
    b = SharedRateLimiter(two_dbs[1], "t", 0.001, 1, wall)
    assert _hits(a, "k")
    assert not _hits(b, "k")
    a.reset("k")
    assert _hits(b, "k")


def test_long_keys_are_hashed_within_the_column() -> None:
    key = counter_key("login", "email:" + "x" * 400)
    assert len(key) <= limits.SHARED_COUNTER_KEY_MAX
    assert key.startswith("login|sha256:")
    assert counter_key("login", "addr:1") == "login|addr:1"


def test_expired_counters_are_swept(
    two_dbs: tuple[Database, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import text

    monkeypatch.setattr(limits, "SHARED_COUNTER_SWEEP_EVERY", 1)
    wall = Wall()
    a = SharedRateLimiter(two_dbs[0], "t", 1.0, 2, wall)
    for key in ("k1", "k2", "k3"):
        a.hit(key)
    wall.t += 10  # every bucket is full again: the rows mean nothing
    a.hit("k4")
    with two_dbs[1].engine.begin() as conn:
        keys = sorted(r[0] for r in conn.execute(text("SELECT key FROM shared_counters")))
    assert keys == ["t|k4"]


def test_login_delay_counts_failures_from_every_process(
    two_dbs: tuple[Database, Database],
) -> None:
    wall = Wall()
    slept: list[float] = []
    a = SharedLoginDelay(two_dbs[0], wall, slept.append, free=2, max_seconds=2.0, base=0.5)
    b = SharedLoginDelay(two_dbs[1], wall, slept.append, free=2, max_seconds=2.0, base=0.5)
    a.failed("email:v@example.org")
    b.failed("email:v@example.org")
    assert a.delay_for("email:v@example.org") == 0.5  # 2 failures, free=2: 0.5 * 2**0
    a.failed("email:v@example.org")
    assert b.delay_for("email:v@example.org") == 1.0
    assert b.wait("email:v@example.org") == 1.0 and slept == [1.0]
    wall.t += 60  # one failure drains per minute
    assert a.delay_for("email:v@example.org") == 0.5
    b.succeeded("email:v@example.org")
    assert a.delay_for("email:v@example.org") == 0.0
    for _ in range(10):
        b.failed("email:w@example.org")
    assert a.delay_for("email:w@example.org") == 2.0  # bounded by max_seconds
