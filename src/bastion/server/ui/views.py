"""What the dashboard's pages show, assembled from the features' services (read only).

Every function takes a session and an access object already checked by
:mod:`bastion.server.auth.rbac` (the page's route does that with the API's minimum
role), and returns frozen view rows the templates render. Nothing here writes.

The attestation state of a device (:func:`attestation_state`) is the gate's rule
(:func:`bastion.server.attestation.service.require_attested`) read for display:
``attested`` (newest verdict passed within the fleet's interval), ``failed``, ``stale``,
``required`` (never attested while the fleet enforces attestation), ``none`` (never
attested, nothing enforced), or ``revoked`` (a revoked device is not judged any more).

The device page's event log (:func:`eventlog_view`) is the TCG event log stored with the
device's newest verdict, parsed by :mod:`bastion.formats.eventlog` and each event's data
decoded by :mod:`bastion.formats.eventdata` (texts made inert: the log is device-supplied,
and the templates escape them again). Each event row names the verdict failures that
concern its PCR (``pcr.mismatch.N``; ``component.<name>.*`` through the component's PCR).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import FormatError
from bastion.formats import eventdata, eventlog
from bastion.server.attestation import repository as attestation_records
from bastion.server.attestation import service as attestation
from bastion.server.attestation.models import AttestationVerdict
from bastion.server.auth.rbac import FleetAccess
from bastion.server.devices import repository as device_records
from bastion.server.devices import service as devices
from bastion.server.devices.models import Device, DeviceStatus
from bastion.server.releases import repository as releases_repo
from bastion.server.releases.models import Release
from bastion.server.rollouts import repository as rollouts_repo
from bastion.server.rollouts.models import DeviceResult, Rollout, RolloutState
from bastion.trust.golden import component_pcr

POSTURE_PREFIX = "posture."


class AttestationState(StrEnum):
    """A device's standing at the attestation gate, as the dashboard names it."""

    ATTESTED = "attested"
    FAILED = "failed"
    STALE = "stale"
    REQUIRED = "required"
    NONE = "none"
    REVOKED = "revoked"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    AttestationState.ATTESTED: "attested",
    AttestationState.FAILED: "attestation failed",
    AttestationState.STALE: "attestation stale",
    AttestationState.REQUIRED: "attestation required",
    AttestationState.NONE: "not attested",
    AttestationState.REVOKED: "not judged (revoked)",
}


@dataclass(frozen=True, slots=True)
class Failure:
    """One verdict failure: its id (e.g. ``pcr.mismatch.7``) and detail."""

    id: str
    detail: str

    @property
    def posture(self) -> bool:
        return self.id.startswith(POSTURE_PREFIX)


@dataclass(frozen=True, slots=True)
class VerdictView:
    id: int
    at: dt.datetime
    ok: bool
    release: str | None
    security_version: int | None
    failures: tuple[Failure, ...]


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device as the fleet page lists it."""

    id: str
    serial: str
    status: str
    last_seen_at: dt.datetime | None
    os_version: str | None
    agent_version: str | None
    target_release: str | None
    slot: str | None
    attestation: AttestationState
    verdict: VerdictView | None

    @property
    def deviations(self) -> tuple[Failure, ...]:
        """Posture deviations of the newest verdict."""
        return tuple(f for f in self.verdict.failures if f.posture) if self.verdict else ()

    @property
    def revoked(self) -> bool:
        return self.status == DeviceStatus.REVOKED


@dataclass(frozen=True, slots=True)
class RecordView:
    id: int
    at: dt.datetime
    text: str


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One event of a TCG event log as the device page shows it."""

    index: int
    pcr: int
    type_name: str
    #: the sha256 digest in hex (the first bank the event has, when it has no sha256)
    digest: str
    data: eventdata.EventData
    #: ids of the verdict's failures that concern this event's PCR
    failures: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EventLogView:
    """The event log of one verdict: its events, or why they cannot be shown."""

    verdict: VerdictView
    events: tuple[LoggedEvent, ...] = ()
    total: int = 0
    #: None when shown; else why not (not kept, or unreadable)
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class DevicePage:
    """Everything the device page shows."""

    row: DeviceRow
    ek_trust: str | None
    cert_serial: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    env: dict[str, str]
    verdicts: tuple[VerdictView, ...]
    events: tuple[RecordView, ...]
    logs: tuple[RecordView, ...]
    eventlog: EventLogView | None = None


def verdict_view(row: AttestationVerdict) -> VerdictView:
    failures = tuple(
        Failure(str(f.get("id", "")), str(f.get("detail", ""))) for f in json.loads(row.failures)
    )
    return VerdictView(row.id, row.at, row.ok, row.release, row.security_version, failures)


def attestation_state(
    settings: attestation.Settings, latest: VerdictView | None, now: dt.datetime
) -> AttestationState:
    """The gate's rule for display (module docstring)."""
    if latest is None:
        return AttestationState.REQUIRED if settings.enforced else AttestationState.NONE
    if not latest.ok:
        return AttestationState.FAILED
    if (now - latest.at).total_seconds() >= settings.interval_seconds:
        return AttestationState.STALE
    return AttestationState.ATTESTED


def _slot(session: Session, device_id: str) -> str | None:
    """The boot slot the device last reported in an event (``data.slot``), if any."""
    for record in device_records.records(session, device_id, "event", limits.UI_SLOT_SCAN):
        try:
            doc: Any = json.loads(record.body)
        except ValueError:
            continue
        data = doc.get("data") if isinstance(doc, dict) else None
        if isinstance(data, dict) and isinstance(data.get("slot"), str | int):
            return str(data["slot"])[:32]
    return None


@dataclass(frozen=True, slots=True)
class FleetTargets:
    """What the fleet's devices should run: the fleet target, and an active rollout."""

    fleet_version: str | None
    rollout: Rollout | None
    rollout_version: str | None

    @classmethod
    def of(cls, session: Session, fleet_id: str) -> FleetTargets:
        fleet = releases_repo.target_release(session, fleet_id)
        rollout = rollouts_repo.active(session, fleet_id)
        release = session.get(Release, rollout.release_id) if rollout is not None else None
        return cls(fleet.version if fleet else None, rollout, release.version if release else None)

    def of_device(self, session: Session, device_id: str) -> str | None:
        """The rule of :func:`bastion.server.rollouts.service.target`, read only: the
        rollout's release once the device's wave is open (and the rollout running, or the
        device already started it), else the fleet target."""
        if self.rollout is not None:
            row = rollouts_repo.rollout_device(session, self.rollout.id, device_id)
            if row is not None and row.wave <= self.rollout.active_wave:
                running = self.rollout.state == RolloutState.RUNNING
                if running or row.result != DeviceResult.PENDING:
                    return self.rollout_version
        return self.fleet_version


def _row(  # noqa: PLR0917 - one row's sources
    session: Session,
    access: FleetAccess,
    device: Device,
    settings: attestation.Settings,
    targets: FleetTargets,
    now: dt.datetime,
) -> DeviceRow:
    newest = attestation.history(session, access.fleet_id, device.id, 1)
    verdict = verdict_view(newest[0]) if newest else None
    return DeviceRow(
        id=device.id,
        serial=device.serial,
        status=device.status,
        last_seen_at=device.last_seen_at,
        os_version=device.os_version,
        agent_version=device.agent_version,
        target_release=targets.of_device(session, device.id),
        slot=_slot(session, device.id),
        attestation=AttestationState.REVOKED
        if device.status == DeviceStatus.REVOKED
        else attestation_state(settings, verdict, now),
        verdict=verdict,
    )


def fleet_devices(session: Session, access: FleetAccess, now: dt.datetime) -> list[DeviceRow]:
    """Every device of the fleet with its state, versions, slot and newest verdict."""
    settings = attestation.settings_of(session, access.fleet_id)
    targets = FleetTargets.of(session, access.fleet_id)
    return [
        _row(session, access, d, settings, targets, now)
        for d in device_records.of_fleet(session, access.fleet_id)
    ]


def _event_text(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict):
        return body
    data = json.dumps(doc.get("data", {}), sort_keys=True)
    return f"{doc.get('type', '?')} {data}"


def failure_pcrs(failures: tuple[Failure, ...]) -> dict[int, tuple[str, ...]]:
    """PCR -> ids of the failures that concern it (``pcr.mismatch.N``, components)."""
    out: dict[int, list[str]] = {}
    for failure in failures:
        parts = failure.id.split(".")
        pcr: int | None = None
        if parts[0] == "pcr" and parts[-1].isdigit():
            pcr = int(parts[-1])
        elif parts[0] == "component" and len(parts) >= 3:
            pcr = component_pcr(".".join(parts[1:-1]))
        if pcr is not None and 0 <= pcr < eventlog.PCR_COUNT:
            out.setdefault(pcr, []).append(failure.id)
    return {pcr: tuple(ids) for pcr, ids in out.items()}


def _digest(event: eventlog.Event) -> str:
    for alg, value in event.digests:
        if alg == eventlog.ALG_SHA256:
            return value.hex()
    alg, value = event.digests[0] if event.digests else (0, b"")
    name = eventlog.ALGORITHMS.get(alg, (f"0x{alg:04x}", 0))[0]
    return f"{name}:{value.hex()}"


def eventlog_view(session: Session, verdict: VerdictView) -> EventLogView:
    """The event log stored with ``verdict``, decoded (module docstring)."""
    raw = attestation_records.eventlog(session, verdict.id)
    if raw is None:
        return EventLogView(verdict, problem="no event log is kept for this verdict")
    try:
        log = eventlog.parse(raw)
    except FormatError as exc:
        reason = eventdata.inert(str(exc))
        return EventLogView(verdict, problem=f"the event log cannot be read: {reason}")
    flagged = failure_pcrs(verdict.failures)
    shown = tuple(
        LoggedEvent(
            index=index,
            pcr=event.pcr,
            type_name=eventdata.type_name(event.event_type),
            digest=_digest(event),
            data=eventdata.describe(event.event_type, event.data),
            failures=flagged.get(event.pcr, ()),
        )
        for index, event in enumerate(log.events[: limits.UI_EVENTLOG_SHOWN])
    )
    return EventLogView(verdict, shown, len(log.events))


def device_page(
    session: Session, access: FleetAccess, device_id: str, now: dt.datetime
) -> DevicePage:
    """One device (NotFoundError when it is not in this fleet, as on the API)."""
    view = devices.show(session, access.fleet_id, device_id)
    device = view.device
    settings = attestation.settings_of(session, access.fleet_id)
    verdicts = tuple(
        verdict_view(v)
        for v in attestation.history(session, access.fleet_id, device.id, limits.UI_VERDICTS_SHOWN)
    )
    events = tuple(
        RecordView(r.id, r.at, _event_text(r.body))
        for r in device_records.records(session, device.id, "event", limits.UI_RECORDS_SHOWN)
    )
    logs = tuple(
        RecordView(r.id, r.at, r.body)
        for r in device_records.records(session, device.id, "log", limits.UI_RECORDS_SHOWN)
    )
    return DevicePage(
        row=_row(session, access, device, settings, FleetTargets.of(session, access.fleet_id), now),
        ek_trust=device.ek_trust,
        cert_serial=device.cert_serial,
        created_at=device.created_at,
        revoked_at=device.revoked_at,
        env=view.env,
        verdicts=verdicts,
        events=events,
        logs=logs,
        eventlog=eventlog_view(session, verdicts[0]) if verdicts else None,
    )
