"""Token-bucket rate limits and the login guessing delay: in memory or shared.

One bucket per key refills at ``rate`` tokens per second up to ``burst``.

* :class:`RateLimiter` and :class:`LoginDelay` keep their state in the process (the
  embedded default: one process, SQLite). At most
  :data:`bastion.limits.RATE_LIMIT_MAX_KEYS` keys are kept; the least recently used are
  dropped first (a dropped bucket starts full).
* :class:`SharedRateLimiter` and :class:`SharedLoginDelay` keep it in the database table
  ``shared_counters`` so several server processes enforce one limit
  (docs/adr/0034-scale-and-webhooks.md). A hit is one atomic
  ``INSERT ... ON CONFLICT DO UPDATE ... WHERE <enough tokens> RETURNING`` on its own
  short transaction (never the request's), so two processes never both take the last
  token. With ``lease > 1`` a process takes that many tokens at once and spends them
  locally (the API limit: one write per ``lease`` requests); all processes together
  still never exceed the shared bucket. Time is the clock's wall time in epoch seconds.

:class:`Limiter` is what the app context holds; both kinds satisfy it. Its
:meth:`~Limiter.try_hit` takes one token only where that needs no I/O (the in-memory
bucket, or the process's lease of a shared one) and never raises: the device answer
cache (docs/adr/0044-device-answer-cache.md) calls it on the event loop and takes the
full path, which calls :meth:`~Limiter.hit`, when it answers False.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Float, String, text
from sqlalchemy.orm import Mapped, mapped_column

from bastion import limits
from bastion.errors import RateLimitError
from bastion.server.db.base import Base

if TYPE_CHECKING:
    from bastion.server.db.engine import Database


class Limiter(Protocol):
    """A rate limit by key: :meth:`hit` takes a token or raises RateLimitError."""

    def hit(self, key: str, cost: float = 1.0) -> None: ...

    def try_hit(self, key: str) -> bool:
        """Take one token if that needs no I/O and leaves the bucket within its limit;
        False (nothing taken) otherwise. Never raises RateLimitError."""
        ...

    def reset(self, key: str) -> None: ...


class RateLimiter:
    """Thread-safe token buckets."""

    def __init__(
        self,
        rate: float,
        burst: int,
        monotonic: Callable[[], float],
        *,
        max_keys: int = limits.RATE_LIMIT_MAX_KEYS,
        what: str = "requests",
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._monotonic = monotonic
        self._max_keys = max_keys
        self._what = what
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from ``key``'s bucket or raise RateLimitError."""
        now = self._monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            if tokens < cost:
                self._buckets[key] = (tokens, now)
                wait = (cost - tokens) / self.rate
                raise RateLimitError(
                    f"too many {self._what}: limit {self.rate:g}/s (burst {self.burst:g}); "
                    f"retry in {wait:.1f} s",
                    retry_after=wait,
                )
            self._buckets[key] = (tokens - cost, now)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)

    def try_hit(self, key: str) -> bool:
        """:meth:`hit` of one token, False instead of RateLimitError (nothing taken)."""
        try:
            self.hit(key)
        except RateLimitError:
            return False
        return True

    def reset(self, key: str) -> None:
        """Forget ``key``'s bucket (it starts full again)."""
        with self._lock:
            self._buckets.pop(key, None)


class LoginDelay:
    """A growing delay for an account under password guessing, never a lock.

    Each failed login for an account adds one to its failure count, which drains by one
    every ``decay_seconds``. While the count is below ``free`` a login is not slowed;
    above it every attempt for that account (right or wrong, from any address) waits
    ``base * 2**(count - free)`` seconds, at most ``max_seconds``. A correct login after
    the wait succeeds and clears the count, so a stranger guessing from elsewhere slows
    the owner down by at most ``max_seconds`` and never locks them out. Like
    :class:`RateLimiter`, state is per process and bounded by ``max_keys`` (LRU).
    """

    def __init__(
        self,
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
        *,
        free: int,
        max_seconds: float,
        base: float = 0.25,
        decay_seconds: float = 60.0,
        max_keys: int = limits.RATE_LIMIT_MAX_KEYS,
    ) -> None:
        self._monotonic = monotonic
        self.sleep = sleep
        self.free = free
        self.max_seconds = max_seconds
        self.base = base
        self.decay_seconds = decay_seconds
        self._max_keys = max_keys
        self._failures: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _count(self, key: str, now: float) -> float:
        count, last = self._failures.pop(key, (0.0, now))
        return max(0.0, count - max(0.0, now - last) / self.decay_seconds)

    def delay_for(self, key: str) -> float:
        """Seconds an attempt for ``key`` must wait now (0 while under ``free`` failures)."""
        now = self._monotonic()
        with self._lock:
            count = self._count(key, now)
            if count:
                self._failures[key] = (count, now)
        if count < self.free:
            return 0.0
        return float(min(self.max_seconds, self.base * 2 ** (count - self.free)))

    def wait(self, key: str) -> float:
        """Sleep for :meth:`delay_for` and return the seconds waited."""
        seconds = self.delay_for(key)
        if seconds > 0:
            self.sleep(seconds)
        return seconds

    def failed(self, key: str) -> None:
        """Count one failed login for ``key``."""
        now = self._monotonic()
        with self._lock:
            self._failures[key] = (self._count(key, now) + 1.0, now)
            while len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        """A correct login: forget ``key``'s failures."""
        with self._lock:
            self._failures.pop(key, None)


# --- shared between processes ------------------------------------------------------------------


class SharedCounter(Base):
    """A token bucket or a failure count shared by every server process.

    ``value`` is the tokens left (or the failure count) as of ``at`` (epoch seconds);
    ``expires_at`` is when the row means nothing any more (a full bucket, a drained
    count) and may be swept."""

    __tablename__ = "shared_counters"

    key: Mapped[str] = mapped_column(String(limits.SHARED_COUNTER_KEY_MAX), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


def counter_key(namespace: str, key: str) -> str:
    """``namespace|key``, hashed when it would exceed the column."""
    full = f"{namespace}|{key}"
    if len(full) <= limits.SHARED_COUNTER_KEY_MAX:
        return full
    return f"{namespace}|sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def _take_sql(dialect: str) -> str:
    least, greatest = ("MIN", "MAX") if dialect == "sqlite" else ("LEAST", "GREATEST")
    refilled = (
        f"{least}(:burst, shared_counters.value + {greatest}(0, :now - shared_counters.at) * :rate)"
    )
    return (
        "INSERT INTO shared_counters (key, value, at, expires_at) "  # noqa: S608 - names only
        "VALUES (:key, :burst - :cost, :now, :now + :cost / :rate) "
        "ON CONFLICT (key) DO UPDATE SET "
        f"value = {refilled} - :cost, "
        f"at = {greatest}(:now, shared_counters.at), "
        f"expires_at = :now + (:burst - ({refilled} - :cost)) / :rate "
        f"WHERE {refilled} >= :cost "
        "RETURNING value"
    )


def _fail_sql(dialect: str) -> str:
    greatest = "MAX" if dialect == "sqlite" else "GREATEST"
    drained = (
        f"{greatest}(0, shared_counters.value - {greatest}(0, :now - shared_counters.at) / :decay)"
    )
    return (
        "INSERT INTO shared_counters (key, value, at, expires_at) "  # noqa: S608 - names only
        "VALUES (:key, 1, :now, :now + :decay) "
        "ON CONFLICT (key) DO UPDATE SET "
        f"value = {drained} + 1, at = :now, expires_at = :now + ({drained} + 1) * :decay "
        "RETURNING value"
    )


class _Sweeper:
    """Deletes expired counters every ``SHARED_COUNTER_SWEEP_EVERY`` uses (per process)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._uses = itertools.count(1)

    def tick(self, now: float) -> None:
        if next(self._uses) % limits.SHARED_COUNTER_SWEEP_EVERY == 0:
            with self._db.engine.begin() as conn:
                conn.execute(
                    text("DELETE FROM shared_counters WHERE expires_at < :now"), {"now": now}
                )


class SharedRateLimiter:
    """Token buckets in ``shared_counters``: one limit for every process on the database."""

    def __init__(
        self,
        db: Database,
        namespace: str,
        rate: float,
        burst: int,
        now: Callable[[], float],
        *,
        lease: int = 1,
        what: str = "requests",
        max_keys: int = limits.RATE_LIMIT_MAX_KEYS,
    ) -> None:
        if not 1 <= lease <= burst:
            raise ValueError(f"lease {lease} must be between 1 and the burst {burst}")
        self.rate = rate
        self.burst = float(burst)
        self.lease = lease
        self._db = db
        self._namespace = namespace
        self._now = now
        self._what = what
        self._max_keys = max_keys
        self._sql = _take_sql(db.engine.dialect.name)
        self._sweeper = _Sweeper(db)
        self._leased: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def _take(self, key: str, cost: float, now: float) -> bool:
        params = {"key": key, "cost": cost, "burst": self.burst, "rate": self.rate, "now": now}
        with self._db.engine.begin() as conn:
            return conn.execute(text(self._sql), params).first() is not None

    def _tokens(self, key: str, now: float) -> float:
        with self._db.engine.begin() as conn:
            row = conn.execute(
                text("SELECT value, at FROM shared_counters WHERE key = :key"), {"key": key}
            ).first()
        if row is None:
            return self.burst
        return min(self.burst, float(row[0]) + max(0.0, now - float(row[1])) * self.rate)

    def try_hit(self, key: str) -> bool:
        """One token from this process's lease of ``key`` (no I/O); False when the
        lease is spent or there is none (then :meth:`hit` asks the shared bucket)."""
        with self._lock:
            left = self._leased.get(key, 0.0)
            if left < 1.0:
                return False
            self._leased[key] = left - 1.0
            self._leased.move_to_end(key)
            return True

    def hit(self, key: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens (from this process's lease or the shared bucket)."""
        if self.lease > 1 and cost <= 1.0:
            with self._lock:
                left = self._leased.pop(key, 0.0)
                if left >= cost:
                    self._leased[key] = left - cost
                    return
        shared = counter_key(self._namespace, key)
        now = self._now()
        self._sweeper.tick(now)
        if self.lease > 1 and cost <= 1.0 and self._take(shared, float(self.lease), now):
            with self._lock:
                self._leased[key] = self.lease - cost
                while len(self._leased) > self._max_keys:
                    self._leased.popitem(last=False)
            return
        if self._take(shared, cost, now):
            return
        wait = max(0.0, (cost - self._tokens(shared, now)) / self.rate)
        raise RateLimitError(
            f"too many {self._what}: limit {self.rate:g}/s (burst {self.burst:g}) "
            f"shared by every server process; retry in {wait:.1f} s",
            retry_after=wait,
        )

    def reset(self, key: str) -> None:
        """Forget ``key``'s bucket in every process (it starts full again)."""
        with self._lock:
            self._leased.pop(key, None)
        with self._db.engine.begin() as conn:
            conn.execute(
                text("DELETE FROM shared_counters WHERE key = :key"),
                {"key": counter_key(self._namespace, key)},
            )


class SharedLoginDelay(LoginDelay):
    """:class:`LoginDelay` whose failure counts live in ``shared_counters``: guessing
    spread over several processes slows the account exactly as in one process."""

    def __init__(
        self,
        db: Database,
        now: Callable[[], float],
        sleep: Callable[[float], None],
        *,
        free: int,
        max_seconds: float,
        base: float = 0.25,
        decay_seconds: float = 60.0,
    ) -> None:
        super().__init__(
            now, sleep, free=free, max_seconds=max_seconds, base=base, decay_seconds=decay_seconds
        )
        self._db = db
        self._fail = _fail_sql(db.engine.dialect.name)
        self._sweeper = _Sweeper(db)

    def _shared_count(self, key: str, now: float) -> float:
        with self._db.engine.begin() as conn:
            row = conn.execute(
                text("SELECT value, at FROM shared_counters WHERE key = :key"),
                {"key": counter_key("delay", key)},
            ).first()
        if row is None:
            return 0.0
        return max(0.0, float(row[0]) - max(0.0, now - float(row[1])) / self.decay_seconds)

    def delay_for(self, key: str) -> float:
        count = self._shared_count(key, self._monotonic())
        if count < self.free:
            return 0.0
        return float(min(self.max_seconds, self.base * 2 ** (count - self.free)))

    def failed(self, key: str) -> None:
        now = self._monotonic()
        self._sweeper.tick(now)
        params = {"key": counter_key("delay", key), "now": now, "decay": self.decay_seconds}
        with self._db.engine.begin() as conn:
            conn.execute(text(self._fail), params)

    def succeeded(self, key: str) -> None:
        with self._db.engine.begin() as conn:
            conn.execute(
                text("DELETE FROM shared_counters WHERE key = :key"),
                {"key": counter_key("delay", key)},
            )
