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
