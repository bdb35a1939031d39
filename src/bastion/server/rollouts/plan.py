"""The pure rules of a rollout: which wave a device is in, and when a wave advances or pauses.

Assignment (:func:`assign`) is deterministic: the same rollout, device and tags always
give the same wave, on any server process. Waves are tried in order; the first that
selects the device wins:

* a *device list* wave selects the devices it names;
* a *tag* wave selects devices carrying the tag;
* a *percentage* wave selects devices whose bucket (SHA-256 of rollout id and device
  id, 0..9999) is below the running sum of the percentage waves so far (x 100): a
  10 % canary then a 40 % wave select buckets 0..999 and 1000..4999.

A device no wave selects is not in the rollout (it keeps the fleet target).

:func:`decide` judges the open wave from its counts: it *pauses* the rollout when the
failures not yet acknowledged (fell back or failed) exceed ``failure_percent`` of the
wave's devices, it *advances* when committed devices reach ``success_percent``, else
it *waits*. An empty non-canary wave advances at once.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Collection
from dataclasses import dataclass

BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class WavePlan:
    """One wave's selector and thresholds (exactly one of percent, tag, devices)."""

    position: int
    name: str
    canary: bool = False
    percent: int | None = None
    tag: str | None = None
    devices: frozenset[str] = frozenset()
    success_percent: int = 100
    failure_percent: int = 0


@dataclass(frozen=True, slots=True)
class WaveCounts:
    """Devices of one wave by their newest result."""

    assigned: int = 0
    pending: int = 0
    installed: int = 0
    committed: int = 0
    fell_back: int = 0
    failed: int = 0

    @property
    def bad(self) -> int:
        return self.fell_back + self.failed


class Decision(enum.StrEnum):
    WAIT = "wait"
    ADVANCE = "advance"
    PAUSE = "pause"


def bucket(rollout_id: str, device_id: str) -> int:
    """The device's stable bucket 0..9999 within one rollout."""
    digest = hashlib.sha256(f"{rollout_id}\0{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(
    waves: list[WavePlan], rollout_id: str, device_id: str, tags: Collection[str]
) -> int | None:
    """The position of the wave that selects the device, or None."""
    cumulative = 0
    own: int | None = None
    for wave in waves:
        if wave.devices and device_id in wave.devices:
            return wave.position
        if wave.tag is not None and wave.tag in tags:
            return wave.position
        if wave.percent is not None:
            cumulative += wave.percent * (BUCKETS // 100)
            if own is None:
                own = bucket(rollout_id, device_id)
            if own < cumulative:
                return wave.position
    return None


def decide(wave: WavePlan, counts: WaveCounts, acknowledged: int) -> tuple[Decision, str]:
    """What the open wave's counts call for, with the reason (for a pause: the numbers)."""
    if counts.assigned == 0:
        if wave.canary:
            return Decision.WAIT, "the canary wave has no device"
        return Decision.ADVANCE, "the wave has no device"
    unacknowledged = max(counts.bad - acknowledged, 0)
    if unacknowledged * 100 > wave.failure_percent * counts.assigned:
        return Decision.PAUSE, (
            f"wave {wave.position} ({wave.name}): {counts.bad} of {counts.assigned} devices "
            f"failed or fell back ({counts.fell_back} fell back), more than the "
            f"{wave.failure_percent}% allowed"
        )
    if counts.committed * 100 >= wave.success_percent * counts.assigned:
        return Decision.ADVANCE, (
            f"wave {wave.position} ({wave.name}): {counts.committed} of {counts.assigned} "
            f"committed, at least {wave.success_percent}%"
        )
    return Decision.WAIT, "waiting for reports"
