"""In-memory token-bucket rate limiter keyed by principal or client address.

One bucket per key refills at ``rate`` tokens per second up to ``burst``. State lives
in the process: with several server processes each enforces its own limit (documented
in docs/server.md). At most :data:`bastion.limits.RATE_LIMIT_MAX_KEYS` buckets are
kept; the least recently used are dropped first (a dropped bucket starts full).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from bastion import limits
from bastion.errors import RateLimitError


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
