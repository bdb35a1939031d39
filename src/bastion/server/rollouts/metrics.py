"""Rollout progress for Prometheus, read from the database at scrape time.

=================================  =====  ==========================================
metric                             type   labels
=================================  =====  ==========================================
``bastion_rollout_devices``        gauge  ``fleet``, ``rollout``, ``wave``, ``result``
``bastion_rollout_progress``       gauge  ``fleet``, ``rollout``, ``state``
=================================  =====  ==========================================

Only running and paused rollouts are exported (at most one per fleet, so the label
values stay bounded). ``bastion_rollout_progress`` is committed devices over assigned
devices (0..1); ``result`` is pending, installed, committed, fell_back or failed, from
the devices' verified reports.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bastion.server.db.engine import Database
from bastion.server.rollouts import repository as repo
from bastion.server.rollouts.models import DeviceResult, RolloutState


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            "bastion_rollout_devices",
            "Devices of an active rollout by wave and newest verified result",
            labels=["fleet", "rollout", "wave", "result"],
        ),
        GaugeMetricFamily(
            "bastion_rollout_progress",
            "Committed over assigned devices of an active rollout",
            labels=["fleet", "rollout", "state"],
        ),
    )


class RolloutCollector(Collector):
    """Collects the progress of the active rollouts of one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def describe(self) -> Iterator[Metric]:
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        devices, progress = _families()
        with self._db.session(write=False) as session:
            for rollout in repo.of_states(session, RolloutState.ACTIVE):
                by_wave = repo.counts(session, rollout.id)
                assigned = committed = 0
                for wave in range(len(repo.waves(session, rollout.id))):
                    results = by_wave.get(wave, {})
                    for result in DeviceResult.ALL:
                        number = results.get(result, 0)
                        devices.add_metric(
                            [rollout.fleet_id, rollout.id, str(wave), result], float(number)
                        )
                        assigned += number
                    committed += results.get(DeviceResult.COMMITTED, 0)
                ratio = committed / assigned if assigned else 0.0
                progress.add_metric([rollout.fleet_id, rollout.id, rollout.state], ratio)
        yield devices
        yield progress
