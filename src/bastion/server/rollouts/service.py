"""Rollouts: waves, canary thresholds, pause/resume/abort, and the devices' signed reports.

Operators (fleet operator and above; every change audited):

* :func:`start` checks the waves (1..``ROLLOUT_MAX_WAVES``, percentages summing to at
  most 100, the canary first, thresholds 0..100), snapshots each active device's wave
  (:func:`bastion.server.rollouts.plan.assign`; devices enrolled later are assigned
  the same way when they first ask for their target) and opens wave 0;
* :func:`pause`, :func:`resume` (the failures seen so far are acknowledged: only new
  ones count toward the next automatic pause), :func:`abort`;
* :func:`status`: each wave's devices by result and the devices that fell back or
  failed, with their reasons.

Devices:

* :func:`target`: the rollout's release when the device's wave is open (running), or
  the fleet's target release (attestation-gated in the route);
* :func:`report_nonce`, then :func:`submit_report`: the report must verify with the
  device's enrolled identity key and carry an open nonce
  (:func:`bastion.trust.update_report.verify_report`), and its ``tpm_clock`` must be 0
  or signed by the device's AK (:func:`~bastion.trust.update_report.verify_clock`);
  the nonce is consumed, the report stored (history), the device's rollout result
  updated, and the open wave judged (:func:`bastion.server.rollouts.plan.decide`): a
  wave over its failure threshold pauses the rollout by itself; a wave at its success
  threshold opens the next; the last one completes the rollout and makes its release
  the fleet target.

The server never records "installed" or "committed" from anything but such a report.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import re
from dataclasses import dataclass, field
from typing import Literal, overload

from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import ConflictError, FormatError, LimitError, NotFoundError, VerificationError
from bastion.formats.update_report import SignedReport
from bastion.server.audit.service import record
from bastion.server.auth.principal import Principal
from bastion.server.auth.rbac import FleetAccess
from bastion.server.devices import service as devices
from bastion.server.releases import repository as releases_repo
from bastion.server.releases.models import Release
from bastion.server.releases.repository import ReleaseRow
from bastion.server.releases.service import put_target
from bastion.server.rollouts import repository as repo
from bastion.server.rollouts.models import (
    DeviceResult,
    DeviceTag,
    Rollout,
    RolloutDevice,
    RolloutState,
    RolloutWave,
    UpdateReport,
    UpdateReportNonce,
)
from bastion.server.rollouts.plan import Decision, WaveCounts, WavePlan, assign, decide
from bastion.trust.update_report import verify_clock, verify_report

LIST_MAX = limits.API_LIST_MAX
PROBLEMS_MAX = 100
REPORTS_MAX = 500
SERVER_ACTOR = "server:rollouts"
TAG_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_TAG = re.compile(TAG_PATTERN)


@dataclass(frozen=True, slots=True)
class WaveSpec:
    """One wave as an operator asks for it."""

    name: str
    canary: bool = False
    percent: int | None = None
    tag: str | None = None
    devices: tuple[str, ...] = ()
    success_percent: int = 100
    failure_percent: int = 0


@dataclass(frozen=True, slots=True)
class WaveView:
    plan: WavePlan
    counts: WaveCounts
    state: str  # pending | open | done
    acknowledged: int


@dataclass(frozen=True, slots=True)
class RolloutView:
    rollout: Rollout
    release: Release
    waves: list[WaveView]
    problems: list[RolloutDevice] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Target:
    """What a device should run: a release (or none), and why."""

    release: ReleaseRow | None
    rollout_id: str | None = None
    wave: int | None = None


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    report: UpdateReport
    rollout: Rollout | None


def _plan(w: RolloutWave) -> WavePlan:
    return WavePlan(
        position=w.position,
        name=w.name,
        canary=w.canary,
        percent=w.percent,
        tag=w.tag,
        devices=frozenset(json.loads(w.devices)) if w.devices else frozenset(),
        success_percent=w.success_percent,
        failure_percent=w.failure_percent,
    )


def _counts(by_result: dict[str, int]) -> WaveCounts:
    return WaveCounts(
        assigned=sum(by_result.values()),
        pending=by_result.get(DeviceResult.PENDING, 0),
        installed=by_result.get(DeviceResult.INSTALLED, 0),
        committed=by_result.get(DeviceResult.COMMITTED, 0),
        fell_back=by_result.get(DeviceResult.FELL_BACK, 0),
        failed=by_result.get(DeviceResult.FAILED, 0),
    )


def _audit(  # noqa: PLR0917 - one audit entry's fields
    session: Session,
    actor: str,
    org_id: str | None,
    event: str,
    details: dict[str, str],
    now: dt.datetime,
) -> None:
    record(session, event, actor, details, org_id=org_id, at=now)


# --- operators ----------------------------------------------------------------------------


def _check_waves(specs: list[WaveSpec]) -> None:
    if not 1 <= len(specs) <= limits.ROLLOUT_MAX_WAVES:
        raise FormatError(f"a rollout has 1..{limits.ROLLOUT_MAX_WAVES} waves, got {len(specs)}")
    total = 0
    for i, spec in enumerate(specs):
        chosen = [spec.percent is not None, spec.tag is not None, bool(spec.devices)]
        if sum(chosen) != 1:
            raise FormatError(f"wave {i}: give exactly one of percent, tag, devices")
        if spec.canary and i != 0:
            raise FormatError(f"wave {i}: only the first wave may be the canary")
        if spec.percent is not None:
            if not 1 <= spec.percent <= 100:
                raise FormatError(f"wave {i}: percent must be 1..100, got {spec.percent}")
            total += spec.percent
        if spec.tag is not None and not _TAG.fullmatch(spec.tag):
            raise FormatError(f"wave {i}: tag {spec.tag[:80]!r} is not a tag")
        if len(spec.devices) > limits.ROLLOUT_WAVE_MAX_DEVICES:
            raise LimitError(
                f"wave {i}: names {len(spec.devices)} devices, "
                f"limit is {limits.ROLLOUT_WAVE_MAX_DEVICES}"
            )
        for name, value in (("success", spec.success_percent), ("failure", spec.failure_percent)):
            if not 0 <= value <= 100:
                raise FormatError(f"wave {i}: {name}_percent must be 0..100, got {value}")
        if not 1 <= len(spec.name) <= limits.ROLLOUT_WAVE_NAME_MAX_LENGTH:
            raise FormatError(
                f"wave {i}: name must be 1..{limits.ROLLOUT_WAVE_NAME_MAX_LENGTH} characters"
            )
    if total > 100:
        raise FormatError(f"wave percentages add up to {total}, more than 100")


def start(
    session: Session,
    access: FleetAccess,
    release_id: str,
    specs: list[WaveSpec],
    now: dt.datetime,
) -> Rollout:
    """Start rolling ``release_id`` out to the fleet, wave 0 first."""
    release = releases_repo.get(session, access.fleet_id, release_id)
    if release is None:
        raise NotFoundError(f"release {release_id!r} not found in this fleet")
    _check_waves(specs)
    running = repo.active(session, access.fleet_id)
    if running is not None:
        raise ConflictError(
            f"rollout {running.id} is {running.state} in this fleet: abort it first"
        )
    rollout = Rollout(
        fleet_id=access.fleet_id,
        release_id=release.id,
        state=RolloutState.RUNNING,
        active_wave=0,
        created_by=access.principal.actor,
        created_at=now,
        updated_at=now,
    )
    session.add(rollout)
    session.flush()
    rows = [
        RolloutWave(
            rollout_id=rollout.id,
            position=i,
            name=s.name,
            canary=s.canary,
            percent=s.percent,
            tag=s.tag,
            devices=json.dumps(sorted(set(s.devices))) if s.devices else None,
            success_percent=s.success_percent,
            failure_percent=s.failure_percent,
            acknowledged_failures=0,
        )
        for i, s in enumerate(specs)
    ]
    session.add_all(rows)
    plans = [_plan(w) for w in rows]
    assigned = []
    for device_id, tags in repo.fleet_devices_with_tags(session, access.fleet_id):
        wave = assign(plans, rollout.id, device_id, tags)
        if wave is not None:
            assigned.append(
                {
                    "rollout_id": rollout.id,
                    "device_id": device_id,
                    "wave": wave,
                    "result": DeviceResult.PENDING,
                }
            )
    if plans[0].canary and not any(a["wave"] == 0 for a in assigned):
        raise ConflictError("the canary wave selects no device of this fleet")
    repo.add_devices(session, assigned)
    _audit(
        session,
        access.principal.actor,
        access.org_id,
        "rollout.start",
        {
            "fleet": access.fleet_id,
            "rollout": rollout.id,
            "release": release.id,
            "version": release.version,
            "waves": str(len(specs)),
            "devices": str(len(assigned)),
        },
        now,
    )
    _evaluate(session, rollout, now)
    session.commit()
    return rollout


def _evaluate(session: Session, rollout: Rollout, now: dt.datetime) -> None:
    """Advance or pause a running rollout as its open wave's counts call for."""
    waves = repo.waves(session, rollout.id)
    while rollout.state == RolloutState.RUNNING:
        wave = waves[rollout.active_wave]
        counts = _counts(repo.counts(session, rollout.id, wave.position).get(wave.position, {}))
        decision, why = decide(_plan(wave), counts, wave.acknowledged_failures)
        if decision is Decision.WAIT:
            return
        details = {"fleet": rollout.fleet_id, "rollout": rollout.id, "wave": str(wave.position)}
        if decision is Decision.PAUSE:
            rollout.state = RolloutState.PAUSED
            rollout.paused_reason = why
            rollout.updated_at = now
            _audit(session, SERVER_ACTOR, None, "rollout.auto_pause", details, now)
            return
        if rollout.active_wave + 1 < len(waves):
            rollout.active_wave += 1
            rollout.updated_at = now
            _audit(session, SERVER_ACTOR, None, "rollout.advance", details, now)
            continue
        rollout.state = RolloutState.COMPLETED
        rollout.updated_at = now
        release = session.get(Release, rollout.release_id)
        assert release is not None  # the foreign key cascades
        put_target(session, rollout.fleet_id, release, SERVER_ACTOR, now)
        _audit(session, SERVER_ACTOR, None, "rollout.complete", details, now)
        return


def _own(session: Session, access: FleetAccess, rollout_id: str) -> Rollout:
    rollout = repo.get(session, access.fleet_id, rollout_id)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id!r} not found in this fleet")
    locked = repo.lock(session, rollout.id)
    assert locked is not None
    return locked


def _change(
    session: Session,
    access: FleetAccess,
    rollout: Rollout,
    event: str,
    now: dt.datetime,
) -> Rollout:
    rollout.updated_at = now
    _audit(
        session,
        access.principal.actor,
        access.org_id,
        event,
        {"fleet": access.fleet_id, "rollout": rollout.id, "state": rollout.state},
        now,
    )
    session.commit()
    return rollout


def pause(session: Session, access: FleetAccess, rollout_id: str, now: dt.datetime) -> Rollout:
    """Stop handing the release to devices that have not started."""
    rollout = _own(session, access, rollout_id)
    if rollout.state != RolloutState.RUNNING:
        raise ConflictError(f"rollout {rollout.id} is {rollout.state}, not running")
    rollout.state = RolloutState.PAUSED
    rollout.paused_reason = f"paused by {access.principal.actor}"
    return _change(session, access, rollout, "rollout.pause", now)


def resume(session: Session, access: FleetAccess, rollout_id: str, now: dt.datetime) -> Rollout:
    """Continue a paused rollout; the open wave's failures so far are acknowledged."""
    rollout = _own(session, access, rollout_id)
    if rollout.state != RolloutState.PAUSED:
        raise ConflictError(f"rollout {rollout.id} is {rollout.state}, not paused")
    wave = repo.waves(session, rollout.id)[rollout.active_wave]
    counts = _counts(repo.counts(session, rollout.id, wave.position).get(wave.position, {}))
    wave.acknowledged_failures = counts.bad
    rollout.state = RolloutState.RUNNING
    rollout.paused_reason = None
    _evaluate(session, rollout, now)
    return _change(session, access, rollout, "rollout.resume", now)


def abort(session: Session, access: FleetAccess, rollout_id: str, now: dt.datetime) -> Rollout:
    """End the rollout: devices get the fleet target again (committed ones keep their
    slot: anti-rollback fuses never go back)."""
    rollout = _own(session, access, rollout_id)
    if rollout.state not in RolloutState.ACTIVE:
        raise ConflictError(f"rollout {rollout.id} is already {rollout.state}")
    rollout.state = RolloutState.ABORTED
    return _change(session, access, rollout, "rollout.abort", now)


def list_rollouts(session: Session, fleet_id: str) -> list[Rollout]:
    return repo.of_fleet(session, fleet_id, LIST_MAX)


def status(session: Session, fleet_id: str, rollout_id: str) -> RolloutView:
    """Progress per wave from the verified reports, and the devices that went wrong."""
    rollout = repo.get(session, fleet_id, rollout_id)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id!r} not found in this fleet")
    release = session.get(Release, rollout.release_id)
    assert release is not None
    by_wave = repo.counts(session, rollout.id)
    views = []
    for w in repo.waves(session, rollout.id):
        if rollout.state == RolloutState.COMPLETED or w.position < rollout.active_wave:
            state = "done"
        elif w.position == rollout.active_wave:
            state = "open"
        else:
            state = "pending"
        views.append(
            WaveView(_plan(w), _counts(by_wave.get(w.position, {})), state, w.acknowledged_failures)
        )
    return RolloutView(rollout, release, views, repo.problems(session, rollout.id, PROBLEMS_MAX))


# --- devices ------------------------------------------------------------------------------


@overload
def target(session: Session, principal: Principal, now: dt.datetime) -> Target: ...


@overload
def target(
    session: Session, principal: Principal, now: dt.datetime, *, write: Literal[False]
) -> Target | None: ...


def target(
    session: Session, principal: Principal, now: dt.datetime, *, write: bool = True
) -> Target | None:
    """The release the calling device should run.

    With ``write=False`` (a read session) it returns None where it would assign the
    device a wave of the active rollout (a write): call it again with a write session."""
    device = devices.own_row(session, principal)
    rollout = repo.active_row(session, device.fleet_id)
    if rollout is not None:
        row = repo.rollout_device(session, rollout.id, device.id)
        if row is None and not write:
            return None
        if row is None:  # enrolled (or tagged) after the start: assign it now, the same way
            plans = [_plan(w) for w in repo.waves(session, rollout.id)]
            wave = assign(plans, rollout.id, device.id, set(repo.tags(session, device.id)))
            if wave is not None:
                row = RolloutDevice(
                    rollout_id=rollout.id,
                    device_id=device.id,
                    wave=wave,
                    result=DeviceResult.PENDING,
                )
                session.add(row)
                session.commit()
        if row is not None and row.wave <= rollout.active_wave:
            started = row.result != DeviceResult.PENDING
            if rollout.state == RolloutState.RUNNING or started:
                return Target(releases_repo.row(session, rollout.release_id), rollout.id, row.wave)
    del now
    return Target(releases_repo.target_row(session, device.fleet_id))


def report_nonce(session: Session, principal: Principal, now: dt.datetime) -> UpdateReportNonce:
    """A fresh single-use nonce for the device's next report."""
    device = devices.own(session, principal)
    repo.purge_nonces(session, now)
    for stale in repo.open_nonces(session, device.id)[limits.UPDATE_REPORT_OPEN_NONCES - 1 :]:
        session.delete(stale)
    row = UpdateReportNonce(
        device_id=device.id,
        nonce=os.urandom(limits.UPDATE_REPORT_NONCE_SIZE),
        expires_at=now + dt.timedelta(seconds=limits.UPDATE_REPORT_NONCE_TTL_SECONDS),
    )
    session.add(row)
    session.commit()
    return row


def submit_report(
    session: Session, principal: Principal, signed: bytes, now: dt.datetime
) -> ReportOutcome:
    """Verify and record a signed report; judge the rollout it belongs to."""
    device = devices.own(session, principal)
    parsed = SignedReport.parse(signed)
    repo.purge_nonces(session, now)
    candidates = repo.open_nonces(session, device.id)
    report = verify_report(
        parsed, device.key_public, device_id=device.id, open_nonces=[c.nonce for c in candidates]
    )
    # tpm_clock is stored only when the enrolled AK signed it (0: unknown; ADR 0038)
    verify_clock(parsed, report, ak_public=device.ak_public, key_public=device.key_public)
    matched = next(c for c in candidates if hmac.compare_digest(c.nonce, report.nonce))
    if not repo.consume_nonce(session, matched.id):
        raise VerificationError("the update report nonce was already used")
    rollout = repo.active(session, device.fleet_id)
    if rollout is not None:
        release = session.get(Release, rollout.release_id)
        if release is None or release.version != report.version:
            rollout = None
    row = UpdateReport(
        device_id=device.id,
        fleet_id=device.fleet_id,
        rollout_id=rollout.id if rollout else None,
        version=report.version,
        slot=report.slot,
        svn=report.svn,
        result=report.result.value,
        reason=report.reason,
        tpm_clock=report.tpm_clock,
        signed=signed,
        at=now,
    )
    session.add(row)
    if rollout is not None:
        rollout = repo.lock(session, rollout.id)
        assert rollout is not None
        member = repo.rollout_device(session, rollout.id, device.id)
        if member is not None:
            member.result = report.result.value
            member.reason = report.reason or None
            member.reported_at = now
            session.flush()
            _evaluate(session, rollout, now)
        else:
            row.rollout_id = None
            rollout = None
    _audit(
        session,
        principal.actor,
        principal.org_id,
        "device.update_report",
        {
            "device": device.id,
            "version": report.version,
            "result": report.result.value,
            "svn": str(report.svn),
            "reason": report.reason[:200],
        },
        now,
    )
    session.commit()
    return ReportOutcome(row, rollout)


def device_reports(
    session: Session, fleet_id: str, device_id: str, limit: int
) -> list[UpdateReport]:
    device = devices.in_fleet(session, fleet_id, device_id)
    return repo.reports(session, device.id, min(limit, REPORTS_MAX))


# --- tags ---------------------------------------------------------------------------------


def tags_of(session: Session, fleet_id: str, device_id: str) -> list[str]:
    return repo.tags(session, devices.in_fleet(session, fleet_id, device_id).id)


def add_tag(
    session: Session, access: FleetAccess, device_id: str, tag: str, now: dt.datetime
) -> None:
    device = devices.in_fleet(session, access.fleet_id, device_id)
    current = repo.tags(session, device.id)
    if tag in current:
        return
    if len(current) >= limits.DEVICE_TAGS_MAX:
        raise LimitError(f"device {device.id} already has {limits.DEVICE_TAGS_MAX} tags")
    session.add(DeviceTag(device_id=device.id, tag=tag))
    _audit(
        session,
        access.principal.actor,
        access.org_id,
        "device.tag",
        {"fleet": access.fleet_id, "device": device.id, "tag": tag},
        now,
    )
    session.commit()


def remove_tag(
    session: Session, access: FleetAccess, device_id: str, tag: str, now: dt.datetime
) -> None:
    device = devices.in_fleet(session, access.fleet_id, device_id)
    row = session.get(DeviceTag, (device.id, tag))
    if row is None:
        raise NotFoundError(f"device {device.id} has no tag {tag!r}")
    session.delete(row)
    _audit(
        session,
        access.principal.actor,
        access.org_id,
        "device.untag",
        {"fleet": access.fleet_id, "device": device.id, "tag": tag},
        now,
    )
    session.commit()
