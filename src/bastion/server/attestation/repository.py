"""Queries on attestation settings, golden statements, nonces and verdicts (no commits).

:func:`expected_release_ids` and :func:`release_goldens` read releases, rollouts and
update reports (their models only) to find the releases a device should run (ADR 0037).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, String, bindparam, delete, func, literal, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import ScalarSelect

from bastion.server.attestation.models import (
    AttestationNonce,
    AttestationVerdict,
    FleetAttestation,
    FleetGolden,
)
from bastion.server.releases.models import FleetTarget, Release
from bastion.server.rollouts.models import (
    DeviceResult,
    Rollout,
    RolloutDevice,
    RolloutState,
    UpdateReport,
)


def settings(session: Session, fleet_id: str) -> FleetAttestation | None:
    return session.get(FleetAttestation, fleet_id)


def goldens(session: Session, fleet_id: str) -> list[FleetGolden]:
    return list(
        session.execute(
            select(FleetGolden)
            .where(FleetGolden.fleet_id == fleet_id)
            .order_by(FleetGolden.added_at.desc(), FleetGolden.id)
        ).scalars()
    )


def _release_golden_count(fleet_id: str) -> ScalarSelect[int]:
    return (
        select(func.count())
        .select_from(Release)
        .where(Release.fleet_id == fleet_id, Release.golden_statement.is_not(None))
        .scalar_subquery()
    )


def golden_count(session: Session, fleet_id: str) -> int:
    """The fleet's own accepted golden statements (``fleet golden set``)."""
    return int(
        session.execute(
            select(func.count()).select_from(FleetGolden).where(FleetGolden.fleet_id == fleet_id)
        ).scalar_one()
    )


def judged_count(session: Session, fleet_id: str) -> int:
    """Golden statements the fleet judges devices with: its own and its releases'."""
    own = (
        select(func.count())
        .select_from(FleetGolden)
        .where(FleetGolden.fleet_id == fleet_id)
        .scalar_subquery()
    )
    return int(session.execute(select(own + _release_golden_count(fleet_id))).scalar_one())


def expected_release_ids(session: Session, device_id: str, fleet_id: str) -> list[str]:
    """The releases the device should run, in this order: its open rollout wave's release
    (as :func:`bastion.server.rollouts.service.target` hands it out), the fleet target
    (a device of an open wave runs it until it installs the wave's release), then the
    release its newest verified update report names."""
    out: list[str] = []
    rollout = session.execute(
        select(Rollout)
        .where(Rollout.fleet_id == fleet_id, Rollout.state.in_(RolloutState.ACTIVE))
        .order_by(Rollout.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    if rollout is not None:
        member = session.get(RolloutDevice, (rollout.id, device_id))
        if member is not None and member.wave <= rollout.active_wave:
            started = member.result != DeviceResult.PENDING
            if rollout.state == RolloutState.RUNNING or started:
                out.append(rollout.release_id)
    # the fleet target too while the device's wave is open: until the device installs the
    # wave's release it still runs the target, and gating must not keep it from the update
    target = session.get(FleetTarget, fleet_id)
    if target is not None and target.release_id not in out:
        out.append(target.release_id)
    reported = session.execute(
        select(Release.id)
        .join(
            UpdateReport,
            (UpdateReport.version == Release.version) & (UpdateReport.fleet_id == Release.fleet_id),
        )
        .where(
            UpdateReport.id
            == select(func.max(UpdateReport.id))
            .where(UpdateReport.device_id == device_id)
            .scalar_subquery(),
            Release.fleet_id == fleet_id,
        )
    ).scalar_one_or_none()
    if reported is not None and reported not in out:
        out.append(reported)
    return out


def release_goldens(
    session: Session, fleet_id: str, include: list[str], limit: int
) -> list[tuple[str, bytes]]:
    """(release id, golden statement) of the releases ``include`` names and of the
    fleet's newest ``limit`` releases with golden values."""
    rows: dict[str, bytes] = {}
    if include:
        for rid, statement in session.execute(
            select(Release.id, Release.golden_statement).where(
                Release.id.in_(include),
                Release.fleet_id == fleet_id,
                Release.golden_statement.is_not(None),
            )
        ).all():
            if statement is not None:
                rows[rid] = statement
    for rid, statement in session.execute(
        select(Release.id, Release.golden_statement)
        .where(Release.fleet_id == fleet_id, Release.golden_statement.is_not(None))
        .order_by(Release.created_at.desc(), Release.id)
        .limit(limit)
    ).all():
        if statement is not None:
            rows.setdefault(rid, statement)
    return list(rows.items())


def golden(session: Session, fleet_id: str, golden_id: str) -> FleetGolden | None:
    row = session.get(FleetGolden, golden_id)
    return row if row is not None and row.fleet_id == fleet_id else None


def golden_by_sha(session: Session, fleet_id: str, sha: str) -> FleetGolden | None:
    return session.execute(
        select(FleetGolden).where(FleetGolden.fleet_id == fleet_id, FleetGolden.sha256 == sha)
    ).scalar_one_or_none()


def purge_nonces(session: Session, now: dt.datetime) -> None:
    session.execute(delete(AttestationNonce).where(AttestationNonce.expires_at <= now))


def open_nonces(session: Session, device_id: str) -> list[AttestationNonce]:
    """The device's open challenges, newest first."""
    return list(
        session.execute(
            select(AttestationNonce)
            .where(AttestationNonce.device_id == device_id)
            .order_by(AttestationNonce.id.desc())
        ).scalars()
    )


def consume_nonce(session: Session, nonce_id: int) -> bool:
    """Delete one open challenge; False if it was gone (used by a concurrent request)."""
    result = session.execute(delete(AttestationNonce).where(AttestationNonce.id == nonce_id))
    return bool(getattr(result, "rowcount", 0))


def latest_verdict(session: Session, device_id: str) -> AttestationVerdict | None:
    return session.execute(
        select(AttestationVerdict)
        .where(AttestationVerdict.device_id == device_id)
        .order_by(AttestationVerdict.id.desc())
        .limit(1)
    ).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class GateState:
    """What the gate reads for one device: the fleet's settings (None: no settings row,
    the defaults apply), its newest verdict (None: never attested) and the number of
    golden statements the fleet judges with (its own and its releases')."""

    gating: bool | None
    interval_seconds: int | None
    verdict_id: int | None
    verdict_ok: bool | None
    verdict_at: dt.datetime | None
    verdict_failures: str | None
    golden_count: int


def _gate_columns(device_id: Any, fleet_id: Any) -> tuple[list[Any], Any, Any]:
    """The gate's columns and the ON clauses of its two outer joins (newest verdict,
    fleet settings), for a device and fleet given as bind parameters or as columns."""
    latest_id = (
        select(func.max(AttestationVerdict.id))
        .where(AttestationVerdict.device_id == device_id)
        .correlate_except(AttestationVerdict)
        .scalar_subquery()
    )
    own = (
        select(func.count())
        .select_from(FleetGolden)
        .where(FleetGolden.fleet_id == fleet_id)
        .correlate_except(FleetGolden)
        .scalar_subquery()
    )
    releases = (
        select(func.count())
        .select_from(Release)
        .where(Release.fleet_id == fleet_id, Release.golden_statement.is_not(None))
        .correlate_except(Release)
        .scalar_subquery()
    )
    columns = [
        FleetAttestation.fleet_id,
        FleetAttestation.gating,
        FleetAttestation.interval_seconds,
        AttestationVerdict.id,
        AttestationVerdict.ok,
        AttestationVerdict.at,
        AttestationVerdict.failures,
        (own + releases).label("golden_count"),
    ]
    return columns, AttestationVerdict.id == latest_id, FleetAttestation.fleet_id == fleet_id


def _gate_statement() -> Select[Any]:
    device_id = bindparam("device_id", type_=String)
    fleet_id = bindparam("fleet_id", type_=String)
    columns, verdict_on, settings_on = _gate_columns(device_id, fleet_id)
    one = select(literal(1).label("one")).subquery()
    return (
        select(*columns)
        .select_from(one)
        .outerjoin(AttestationVerdict, verdict_on)
        .outerjoin(FleetAttestation, settings_on)
    )


def _auth_and_gate_statement() -> Select[Any]:
    """The device-key authentication's statement (devices/repository ``_BY_API_KEY``:
    a DeviceRow's columns by ``api_key_hash``) with the gate's columns after them."""
    from bastion.server.devices.models import Device
    from bastion.server.devices.repository import row_statement

    columns, verdict_on, settings_on = _gate_columns(Device.id, Device.fleet_id)
    return (
        row_statement(*columns)
        .outerjoin(AttestationVerdict, verdict_on)
        .outerjoin(FleetAttestation, settings_on)
        .where(Device.api_key_hash == bindparam("api_key_hash", type_=String))
    )


#: built once: the gate runs on every gated device request, and a statement object
#: that is reused keeps its compiled form and cache key (no per-request construction)
_GATE = _gate_statement()
#: the gated heartbeat routes authenticate and read the gate in this one statement
#: (:func:`prefetch_gate`; docs/adr/0043-device-hot-path.md)
_AUTH_AND_GATE = _auth_and_gate_statement()


def prefetch_gate(session: Session) -> None:
    """Make this session's device-key authentication read the gate's inputs too (one
    statement instead of two); :func:`gate_state` then uses them for that device."""
    from bastion.server.devices.repository import API_KEY_STATEMENT

    session.info[API_KEY_STATEMENT] = _AUTH_AND_GATE


def gate_state(session: Session, device_id: str, fleet_id: str) -> GateState:
    """The gate's inputs for one device, in one query of the columns it needs (none,
    when this session's authentication read them: :func:`prefetch_gate`)."""
    from bastion.server.devices.repository import API_KEY_EXTRA

    held = session.info.pop(API_KEY_EXTRA, None)
    if held is not None and held[0] == device_id:
        row = held[1]
    else:
        row = session.execute(_GATE, {"device_id": device_id, "fleet_id": fleet_id}).one()
    has_settings = row[0] is not None
    return GateState(
        gating=bool(row[1]) if has_settings else None,
        interval_seconds=int(row[2]) if has_settings else None,
        verdict_id=row[3],
        verdict_ok=bool(row[4]) if row[3] is not None else None,
        verdict_at=row[5],
        verdict_failures=row[6],
        golden_count=int(row[7]),
    )


def latest_accepted(session: Session, device_id: str) -> AttestationVerdict | None:
    return session.execute(
        select(AttestationVerdict)
        .where(AttestationVerdict.device_id == device_id, AttestationVerdict.ok.is_(True))
        .order_by(AttestationVerdict.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def history(session: Session, device_id: str, limit: int) -> list[AttestationVerdict]:
    return list(
        session.execute(
            select(AttestationVerdict)
            .where(AttestationVerdict.device_id == device_id)
            .order_by(AttestationVerdict.id.desc())
            .limit(limit)
        ).scalars()
    )


def forget_older_eventlogs(session: Session, device_id: str, keep: int) -> None:
    """Clear the stored event log of the device's verdicts other than ``keep`` (only the
    newest verdict keeps its log: at most one log per device is stored)."""
    session.execute(
        update(AttestationVerdict)
        .where(
            AttestationVerdict.device_id == device_id,
            AttestationVerdict.id != keep,
            AttestationVerdict.eventlog.is_not(None),
        )
        .values(eventlog=None)
        .execution_options(synchronize_session=False)
    )


def device_eventlog(session: Session, device_id: str, verdict_id: int) -> bytes | None:
    """The event log stored with verdict ``verdict_id`` of device ``device_id`` (None: no
    such verdict of that device, or its log was not kept)."""
    value = session.execute(
        select(AttestationVerdict.eventlog).where(
            AttestationVerdict.id == verdict_id, AttestationVerdict.device_id == device_id
        )
    ).scalar_one_or_none()
    return bytes(value) if value is not None else None


def eventlog(session: Session, verdict_id: int) -> bytes | None:
    """The event log stored with a verdict (None: not kept, or from before it was)."""
    value = session.execute(
        select(AttestationVerdict.eventlog).where(AttestationVerdict.id == verdict_id)
    ).scalar_one_or_none()
    return bytes(value) if value is not None else None
