"""Fleet metrics read from the database at scrape time (a prometheus-client Collector).

Nothing is counted in memory: devices by state are counted in ``devices``; enrolments,
logins and audit entries are counted in the audit log, which is append-only, so the
``*_total`` values only grow, survive restarts, and agree between several server
processes on one database. Each scrape is seven indexed aggregate queries.

==================================  =======  =========================================
metric                              type     labels
==================================  =======  =========================================
``bastion_devices``                 gauge    ``state`` (active, revoked)
``bastion_devices_by_verdict``      gauge    ``verdict`` (passed, failed, none)
``bastion_devices_by_version``      gauge    ``version`` (reported OS version)
``bastion_devices_connected``       gauge    (none)
``bastion_enrolments_total``        counter  ``result`` (success, refused)
``bastion_logins_total``            counter  ``result`` (success, failure, throttled)
``bastion_audit_entries_total``     counter  (none)
==================================  =======  =========================================

The ``by_verdict``, ``by_version`` and ``connected`` gauges count *active* devices.
``verdict`` is the result of the device's newest attestation verdict (``none``: it never
attested); freshness against the fleet's interval is the gate's business, not this
gauge's. ``version`` is the OS version the device last reported (``unknown`` when it
reported none): a device-chosen string, so only the ``METRICS_VERSIONS_MAX`` most common
versions are labelled (cut to ``METRICS_LABEL_MAX_LENGTH`` characters), the rest are
summed under ``other``, and the label set stays bounded whatever devices send.
``bastion_devices_connected`` counts devices whose command channel is open according to
the presence rows every server process writes (``device_presence.connected``), so it
is fleet-wide; a process killed without closing its channels leaves its devices
counted until they reconnect elsewhere. The open WebSockets of *this* process are
``bastion_channel_connections`` (:mod:`bastion.server.metrics.routes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bastion import limits
from bastion.server.agent.models import DevicePresence
from bastion.server.attestation.models import AttestationVerdict
from bastion.server.audit.models import AuditEntry, AuditHead
from bastion.server.db.engine import Database
from bastion.server.devices.models import Device, DeviceStatus

DEVICE_STATES = (DeviceStatus.ACTIVE, DeviceStatus.REVOKED)
VERDICTS = ("passed", "failed", "none")
OTHER_VERSIONS = "other"
UNKNOWN_VERSION = "unknown"
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
        "verdicts": GaugeMetricFamily(
            "bastion_devices_by_verdict",
            "Active devices by the result of their newest attestation verdict",
            labels=["verdict"],
        ),
        "versions": GaugeMetricFamily(
            "bastion_devices_by_version",
            "Active devices by reported OS version (the most common ones; the rest: other)",
            labels=["version"],
        ),
        "connected": GaugeMetricFamily(
            "bastion_devices_connected",
            "Active devices whose command channel is open (any server process)",
        ),
    }


def _verdicts(session: Session) -> dict[str, int]:
    """Active devices by their newest verdict: passed, failed or none."""
    newest = (
        select(func.max(AttestationVerdict.id))
        .where(AttestationVerdict.device_id == Device.id)
        .correlate(Device)
        .scalar_subquery()
    )
    out = dict.fromkeys(VERDICTS, 0)
    rows = session.execute(
        select(AttestationVerdict.ok, func.count())
        .select_from(Device)
        .outerjoin(AttestationVerdict, AttestationVerdict.id == newest)
        .where(Device.status == DeviceStatus.ACTIVE)
        .group_by(AttestationVerdict.ok)
    )
    for ok, number in rows:
        out["none" if ok is None else "passed" if ok else "failed"] += int(number)
    return out


def _versions(session: Session, active: int) -> dict[str, int]:
    """Active devices by OS version: the most common versions, the rest as ``other``."""
    rows = session.execute(
        select(Device.os_version, func.count().label("n"))
        .where(Device.status == DeviceStatus.ACTIVE)
        .group_by(Device.os_version)
        .order_by(func.count().desc(), Device.os_version)
        .limit(limits.METRICS_VERSIONS_MAX)
    )
    out: dict[str, int] = {}
    for version, number in rows:
        label = UNKNOWN_VERSION if not version else version[: limits.METRICS_LABEL_MAX_LENGTH]
        if label in (OTHER_VERSIONS, UNKNOWN_VERSION) and version:
            label = f"{label} (reported)"  # a device cannot pose as the aggregate rows
        out[label] = out.get(label, 0) + int(number)
    rest = active - sum(out.values())
    if rest > 0:
        out[OTHER_VERSIONS] = rest
    return out


def _connected(session: Session) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(DevicePresence)
            .join(Device, Device.id == DevicePresence.device_id)
            .where(DevicePresence.connected.is_(True), Device.status == DeviceStatus.ACTIVE)
        ).scalar_one()
    )


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
            verdicts = _verdicts(session)
            versions = _versions(session, states.get(DeviceStatus.ACTIVE, 0))
            connected = _connected(session)
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
        for name, values in (("verdicts", verdicts), ("versions", versions)):
            family = families[name]
            assert isinstance(family, GaugeMetricFamily)
            for label, number in values.items():
                family.add_metric([label], float(number))
        gauge = families["connected"]
        assert isinstance(gauge, GaugeMetricFamily)
        gauge.add_metric([], float(connected))
        yield from families.values()
