"""Fleet metrics read from the database at scrape time (a prometheus-client Collector).

Nothing is counted in memory: devices by state are counted in ``devices``; enrolments,
logins and audit entries are counted in the audit log, which is append-only, so the
``*_total`` values only grow, survive restarts, and agree between several server
processes on one database. Each scrape is four indexed aggregate queries.

=================================  =======  =====================================
metric                             type     labels
=================================  =======  =====================================
``bastion_devices``                gauge    ``state`` (active, revoked)
``bastion_enrolments_total``       counter  ``result`` (success, refused)
``bastion_logins_total``           counter  ``result`` (success, failure, throttled)
``bastion_audit_entries_total``    counter  (none)
=================================  =======  =====================================
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from bastion.server.audit.models import AuditEntry, AuditHead
from bastion.server.db.engine import Database
from bastion.server.devices.models import Device, DeviceStatus

DEVICE_STATES = (DeviceStatus.ACTIVE, DeviceStatus.REVOKED)
#: audit event -> (metric, result label)
AUDIT_COUNTED: Mapping[str, tuple[str, str]] = {
    "enroll.finish": ("enrolments", "success"),
    "enroll.refused": ("enrolments", "refused"),
    "user.login": ("logins", "success"),
    "user.login_failed": ("logins", "failure"),
    "user.second_factor_failed": ("logins", "failure"),
    "user.login_throttled": ("logins", "throttled"),
}
RESULTS = {"enrolments": ("success", "refused"), "logins": ("success", "failure", "throttled")}


def _families() -> dict[str, Metric]:
    return {
        "devices": GaugeMetricFamily(
            "bastion_devices", "Enrolled devices by state", labels=["state"]
        ),
        "enrolments": CounterMetricFamily(
            "bastion_enrolments", "Device enrolments finished or refused", labels=["result"]
        ),
        "logins": CounterMetricFamily(
            "bastion_logins", "Operator logins by result", labels=["result"]
        ),
        "audit": CounterMetricFamily("bastion_audit_entries", "Entries in the audit log"),
    }


class FleetCollector(Collector):
    """Collects the fleet metrics of one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def describe(self) -> Iterator[Metric]:
        yield from _families().values()

    def collect(self) -> Iterator[Metric]:
        families = _families()
        with self._db.session(write=False) as session:
            states: dict[str, int] = {
                status: int(number)
                for status, number in session.execute(
                    select(Device.status, func.count()).group_by(Device.status)
                )
            }
            counted: dict[str, int] = {
                event: int(number)
                for event, number in session.execute(
                    select(AuditEntry.event, func.count())
                    .where(AuditEntry.event.in_(list(AUDIT_COUNTED)))
                    .group_by(AuditEntry.event)
                )
            }
            audit_seq = session.execute(
                select(AuditHead.seq).where(AuditHead.id == 1)
            ).scalar_one_or_none()
        devices = families["devices"]
        assert isinstance(devices, GaugeMetricFamily)
        for state in DEVICE_STATES:
            devices.add_metric([state], float(states.get(state, 0)))
        sums = {(m, r): 0 for m, results in RESULTS.items() for r in results}
        for event, number in counted.items():
            sums[AUDIT_COUNTED[event]] += int(number)
        for (metric, result), value in sums.items():
            family = families[metric]
            assert isinstance(family, CounterMetricFamily)
            family.add_metric([result], float(value))
        audit = families["audit"]
        assert isinstance(audit, CounterMetricFamily)
        audit.add_metric([], float(audit_seq or 0))
        yield from families.values()
