"""Queries on rollouts, waves, rollout devices, update reports, report nonces, tags."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, bindparam, delete, func, insert, select
from sqlalchemy.orm import Session

from bastion.server.devices.models import Device, DeviceStatus
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


def get(session: Session, fleet_id: str, rollout_id: str) -> Rollout | None:
    row = session.get(Rollout, rollout_id)
    return row if row is not None and row.fleet_id == fleet_id else None


def lock(session: Session, rollout_id: str) -> Rollout | None:
    """The rollout row, locked for this transaction (PostgreSQL; SQLite serializes writes)."""
    return session.execute(
        select(Rollout)
        .where(Rollout.id == rollout_id)
        .with_for_update()
        .execution_options(populate_existing=True)  # another transaction may have moved it
    ).scalar_one_or_none()


#: built once (every device's target-release request reads it)
_ACTIVE = (
    select(Rollout)
    .where(Rollout.fleet_id == bindparam("fleet_id"), Rollout.state.in_(RolloutState.ACTIVE))
    .order_by(Rollout.created_at.desc())
    .limit(1)
)


def active(session: Session, fleet_id: str) -> Rollout | None:
    """The fleet's running or paused rollout (at most one)."""
    return session.execute(_ACTIVE, {"fleet_id": fleet_id}).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class ActiveRow:
    """What a device's target-release answer reads of the active rollout."""

    id: str
    state: str
    active_wave: int
    release_id: str


#: built once: :func:`active` as the heartbeat reads it (plain columns, same order)
_ACTIVE_ROW = (
    select(*(getattr(Rollout, name) for name in ActiveRow.__slots__))
    .where(
        Rollout.fleet_id == bindparam("fleet_id", type_=String),
        Rollout.state.in_(RolloutState.ACTIVE),
    )
    .order_by(Rollout.created_at.desc())
    .limit(1)
)


def active_row(session: Session, fleet_id: str) -> ActiveRow | None:
    """:func:`active`'s columns the heartbeat needs, on the session's connection."""
    row = session.connection().execute(_ACTIVE_ROW, {"fleet_id": fleet_id}).first()
    return ActiveRow(*row) if row is not None else None


def of_fleet(session: Session, fleet_id: str, limit: int) -> list[Rollout]:
    return list(
        session.execute(
            select(Rollout)
            .where(Rollout.fleet_id == fleet_id)
            .order_by(Rollout.created_at.desc(), Rollout.id)
            .limit(limit)
        ).scalars()
    )


def of_states(session: Session, states: Iterable[str]) -> list[Rollout]:
    return list(session.execute(select(Rollout).where(Rollout.state.in_(list(states)))).scalars())


def waves(session: Session, rollout_id: str) -> list[RolloutWave]:
    return list(
        session.execute(
            select(RolloutWave)
            .where(RolloutWave.rollout_id == rollout_id)
            .order_by(RolloutWave.position)
        ).scalars()
    )


def fleet_devices_with_tags(session: Session, fleet_id: str) -> list[tuple[str, set[str]]]:
    """Active devices of the fleet with their tags."""
    ids = list(
        session.execute(
            select(Device.id)
            .where(Device.fleet_id == fleet_id, Device.status == DeviceStatus.ACTIVE)
            .order_by(Device.id)
        ).scalars()
    )
    tags: dict[str, set[str]] = {i: set() for i in ids}
    for device_id, tag in session.execute(
        select(DeviceTag.device_id, DeviceTag.tag)
        .join(Device, Device.id == DeviceTag.device_id)
        .where(Device.fleet_id == fleet_id)
    ):
        if device_id in tags:
            tags[device_id].add(tag)
    return [(i, tags[i]) for i in ids]


def add_devices(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(RolloutDevice), rows)


def rollout_device(session: Session, rollout_id: str, device_id: str) -> RolloutDevice | None:
    return session.get(RolloutDevice, (rollout_id, device_id))


def counts(session: Session, rollout_id: str, wave: int | None = None) -> dict[int, dict[str, int]]:
    """wave -> result -> devices."""
    query = select(RolloutDevice.wave, RolloutDevice.result, func.count()).where(
        RolloutDevice.rollout_id == rollout_id
    )
    if wave is not None:
        query = query.where(RolloutDevice.wave == wave)
    out: dict[int, dict[str, int]] = {}
    for w, result, number in session.execute(
        query.group_by(RolloutDevice.wave, RolloutDevice.result)
    ):
        out.setdefault(int(w), {})[str(result)] = int(number)
    return out


def problems(session: Session, rollout_id: str, limit: int) -> list[RolloutDevice]:
    """Devices that fell back or failed, newest report first."""
    return list(
        session.execute(
            select(RolloutDevice)
            .where(
                RolloutDevice.rollout_id == rollout_id,
                RolloutDevice.result.in_(DeviceResult.BAD),
            )
            .order_by(RolloutDevice.reported_at.desc(), RolloutDevice.device_id)
            .limit(limit)
        ).scalars()
    )


def purge_nonces(session: Session, now: dt.datetime) -> None:
    session.execute(delete(UpdateReportNonce).where(UpdateReportNonce.expires_at <= now))


def open_nonces(session: Session, device_id: str) -> list[UpdateReportNonce]:
    """The device's open report nonces, newest first."""
    return list(
        session.execute(
            select(UpdateReportNonce)
            .where(UpdateReportNonce.device_id == device_id)
            .order_by(UpdateReportNonce.id.desc())
        ).scalars()
    )


def consume_nonce(session: Session, nonce_id: int) -> bool:
    """Delete one open nonce; False if a concurrent request took it first."""
    result = session.execute(delete(UpdateReportNonce).where(UpdateReportNonce.id == nonce_id))
    return bool(getattr(result, "rowcount", 0))


def reports(session: Session, device_id: str, limit: int) -> list[UpdateReport]:
    return list(
        session.execute(
            select(UpdateReport)
            .where(UpdateReport.device_id == device_id)
            .order_by(UpdateReport.id.desc())
            .limit(limit)
        ).scalars()
    )


def tags(session: Session, device_id: str) -> list[str]:
    return list(
        session.execute(
            select(DeviceTag.tag).where(DeviceTag.device_id == device_id).order_by(DeviceTag.tag)
        ).scalars()
    )
