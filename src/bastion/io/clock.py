"""Time as an injectable dependency: code that needs "now" takes a Clock."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time and a monotonic timer."""

    def now(self) -> dt.datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back."""
        ...


@dataclass(frozen=True, slots=True)
class SystemClock:
    """The real clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(slots=True)
class FixedClock:
    """A clock that only moves when told to; for tests and reproducible builds."""

    current: dt.datetime

    def now(self) -> dt.datetime:
        return self.current

    def monotonic(self) -> float:
        return self.current.timestamp()

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.current += dt.timedelta(seconds=seconds)
