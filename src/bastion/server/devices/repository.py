"""Queries on devices, their overrides, records and revoked certificates (no commits)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Select,
    String,
    bindparam,
    delete,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from bastion.server.devices.models import (
    Device,
    DeviceEnvVar,
    DeviceRecord,
    DeviceStatus,
    RevokedCertificate,
)
from bastion.server.orgs.models import Fleet, FleetEnvVar


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device's own columns as a device reads them (``DeviceOut``), with its fleet's
    organisation and config: what authenticating a device API key and the heartbeat
    routes read, as one plain row instead of two ORM objects (ADR 0043, second round)."""

    id: str
    fleet_id: str
    serial: str
    status: str
    cert_serial: str
    api_key_prefix: str
    os_version: str | None
    agent_version: str | None
    note: str | None
    created_at: dt.datetime
    last_seen_at: dt.datetime | None
    revoked_at: dt.datetime | None
    ek_trust: str | None
    org_id: str
    fleet_config: str

    @classmethod
    def of(cls, device: Device, fleet: Fleet) -> DeviceRow:
        """The same row from ORM objects (a certificate's authentication loads those)."""
        return cls(
            id=device.id,
            fleet_id=device.fleet_id,
            serial=device.serial,
            status=device.status,
            cert_serial=device.cert_serial,
            api_key_prefix=device.api_key_prefix,
            os_version=device.os_version,
            agent_version=device.agent_version,
            note=device.note,
            created_at=device.created_at,
            last_seen_at=device.last_seen_at,
            revoked_at=device.revoked_at,
            ek_trust=device.ek_trust,
            org_id=fleet.org_id,
            fleet_config=fleet.config,
        )


#: DeviceRow's fields that are the device's columns, in order (the fleet's two follow)
_DEVICE_COLUMNS = tuple(f for f in DeviceRow.__slots__ if f not in ("org_id", "fleet_config"))
#: the columns of a DeviceRow, in its field order
ROW_COLUMNS: tuple[Any, ...] = (
    *(getattr(Device, name) for name in _DEVICE_COLUMNS),
    Fleet.org_id,
    Fleet.config,
)


def row_statement(*extra: Any) -> Select[Any]:
    """A DeviceRow's columns (then ``extra``), device joined to its fleet; callers add
    the WHERE clause."""
    return select(*ROW_COLUMNS, *extra).join_from(Device, Fleet, Fleet.id == Device.fleet_id)


#: built once (every device request authenticates): reused, it keeps its compiled form
_BY_API_KEY = row_statement().where(Device.api_key_hash == bindparam("api_key_hash", type_=String))
_ROW_BY_ID = row_statement().where(Device.id == bindparam("device_id", type_=String))


#: what verifying a device's request signatures needs (signing_row, signing_rows)
SIGNING_COLUMNS = (
    Device.id,
    Device.status,
    Device.certificate,
    Device.fleet_id,
    Fleet.org_id,
    Device.agent_version,
    Device.os_version,
)
_SIGNING_FROM = select(*SIGNING_COLUMNS).join(Fleet, Fleet.id == Device.fleet_id)
_SIGNING = _SIGNING_FROM.where(Device.id == bindparam("device_id", type_=String))
_SIGNING_PAGE = (
    _SIGNING_FROM.where(
        Device.id > bindparam("after", type_=String),
        Device.status == DeviceStatus.ACTIVE,
        Device.certificate.is_not(None),
    )
    .order_by(Device.id)
    .limit(bindparam("limit"))
)


def signing_rows(session: Session, after: str, limit: int) -> list[Any]:
    """:func:`signing_row` of up to ``limit`` active devices with a certificate whose id
    sorts after ``after``, in id order (one page of a walk over the fleet)."""
    return list(session.connection().execute(_SIGNING_PAGE, {"after": after, "limit": limit}))


def signing_row(session: Session, device_id: str) -> Any:
    """What verifying the device's request signatures needs, in one Core query: (id,
    status, certificate, fleet id, org id, agent version, OS version); None when there
    is no such device (or its fleet is gone)."""
    return session.connection().execute(_SIGNING, {"device_id": device_id}).first()


#: session.info key: a statement to authenticate API keys with instead of _BY_API_KEY
#: (same ``api_key_hash`` parameter; ROW_COLUMNS first, then columns of its own)
API_KEY_STATEMENT = "bastion.devices.api_key_statement"
#: session.info key where the extra columns of that statement's row are left:
#: ``(device_id, (column, ...))``
API_KEY_EXTRA = "bastion.devices.api_key_extra"


def row_by_api_key(session: Session, api_key_hash: str) -> DeviceRow | None:
    """The device holding this API key, with its fleet's columns, in one Core query.

    A caller that needs more about the device in the same statement (the attestation
    gate: docs/adr/0043-device-hot-path.md) puts its statement into
    ``session.info[API_KEY_STATEMENT]``; the columns after :data:`ROW_COLUMNS` are left
    in ``session.info[API_KEY_EXTRA]`` with the device's id."""
    statement = session.info.get(API_KEY_STATEMENT, _BY_API_KEY)
    # plain columns: the session's connection runs it without the ORM's result machinery
    row = session.connection().execute(statement, {"api_key_hash": api_key_hash}).first()
    if row is None:
        return None
    found = DeviceRow(*row[: len(ROW_COLUMNS)])
    if len(row) > len(ROW_COLUMNS):
        session.info[API_KEY_EXTRA] = (found.id, tuple(row[len(ROW_COLUMNS) :]))
    return found


def row_by_id(session: Session, device_id: str) -> DeviceRow | None:
    """:func:`row_by_api_key` by device id (None: no such device, or its fleet is gone)."""
    row = session.connection().execute(_ROW_BY_ID, {"device_id": device_id}).first()
    return DeviceRow(*row) if row is not None else None


def with_fleet_by_cert(session: Session, cert_sha256: str) -> tuple[Device, Fleet] | None:
    """The device this certificate was issued to and its fleet, in one query."""
    row = session.execute(
        select(Device, Fleet)
        .join(Fleet, Fleet.id == Device.fleet_id)
        .where(Device.cert_sha256 == cert_sha256)
    ).first()
    return (row[0], row[1]) if row else None


def get(session: Session, device_id: str) -> Device | None:
    return session.get(Device, device_id)


def of_fleet(session: Session, fleet_id: str) -> list[Device]:
    return list(
        session.execute(
            select(Device).where(Device.fleet_id == fleet_id).order_by(Device.created_at, Device.id)
        ).scalars()
    )


def env(session: Session, device_id: str) -> list[DeviceEnvVar]:
    return list(
        session.execute(
            select(DeviceEnvVar)
            .where(DeviceEnvVar.device_id == device_id)
            .order_by(DeviceEnvVar.name)
        ).scalars()
    )


def _env_statement() -> CompoundSelect[Any]:
    fleet = select(FleetEnvVar.name, FleetEnvVar.value, literal(0).label("own")).where(
        FleetEnvVar.fleet_id == bindparam("fleet_id")
    )
    own = select(DeviceEnvVar.name, DeviceEnvVar.value, literal(1).label("own")).where(
        DeviceEnvVar.device_id == bindparam("device_id")
    )
    return union_all(fleet, own)


#: built once (every config request runs it): reused, it keeps its compiled form
_ENV = _env_statement()


def fleet_and_device_env(
    session: Session, fleet_id: str, device_id: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The fleet's variables and the device's overrides, in one query."""
    found: tuple[dict[str, str], dict[str, str]] = ({}, {})
    # plain columns: the session's connection runs it without the ORM's result machinery
    for name, value, is_own in session.connection().execute(
        _ENV, {"fleet_id": fleet_id, "device_id": device_id}
    ):
        found[int(is_own)][name] = value
    return found


def count_env(session: Session, device_id: str) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(DeviceEnvVar)
            .where(DeviceEnvVar.device_id == device_id)
        ).scalar_one()
    )


def delete_env(session: Session, device_id: str, name: str) -> int:
    result = session.execute(
        delete(DeviceEnvVar).where(DeviceEnvVar.device_id == device_id, DeviceEnvVar.name == name)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def records(session: Session, device_id: str, kind: str, limit: int) -> list[DeviceRecord]:
    return list(
        session.execute(
            select(DeviceRecord)
            .where(DeviceRecord.device_id == device_id, DeviceRecord.kind == kind)
            .order_by(DeviceRecord.id.desc())
            .limit(limit)
        ).scalars()
    )


def lock(session: Session, device_id: str) -> None:
    """Lock the device row until commit (PostgreSQL; SQLite writers hold the file lock),
    so one device's records get ids in commit order and its quota is applied serially."""
    session.execute(select(Device.id).where(Device.id == device_id).with_for_update())


def records_after(
    session: Session, device_id: str, kind: str, since: int, limit: int
) -> list[DeviceRecord]:
    """A page of one device's records of ``kind`` with ids above ``since``, oldest first."""
    return list(
        session.execute(
            select(DeviceRecord)
            .where(
                DeviceRecord.device_id == device_id,
                DeviceRecord.kind == kind,
                DeviceRecord.id > since,
            )
            .order_by(DeviceRecord.id)
            .limit(limit)
        ).scalars()
    )


def usage(session: Session, device_id: str, kind: str) -> tuple[int, int]:
    """(count, bytes) of one device's records of ``kind``."""
    row = session.execute(
        select(func.count(), func.coalesce(func.sum(DeviceRecord.size), 0)).where(
            DeviceRecord.device_id == device_id, DeviceRecord.kind == kind
        )
    ).one()
    return int(row[0]), int(row[1])


def oldest(
    session: Session, device_id: str, kind: str, chunk: int = 500
) -> Iterator[tuple[int, int]]:
    """(id, size) of one device's records of ``kind``, oldest first, read in chunks."""
    last = 0
    while True:
        batch = session.execute(
            select(DeviceRecord.id, DeviceRecord.size)
            .where(
                DeviceRecord.device_id == device_id,
                DeviceRecord.kind == kind,
                DeviceRecord.id > last,
            )
            .order_by(DeviceRecord.id)
            .limit(chunk)
        ).all()
        if not batch:
            return
        for rid, size in batch:
            yield int(rid), int(size)
        last = int(batch[-1][0])


def delete_records(session: Session, ids: list[int]) -> None:
    for start in range(0, len(ids), 500):
        session.execute(delete(DeviceRecord).where(DeviceRecord.id.in_(ids[start : start + 500])))


def delete_records_before(
    session: Session, cutoff: dt.datetime, device_id: str | None = None
) -> int:
    """Remove records older than ``cutoff`` (one device's, or every device's)."""
    query = delete(DeviceRecord).where(DeviceRecord.at < cutoff)
    if device_id is not None:
        query = query.where(DeviceRecord.device_id == device_id)
    return int(session.execute(query).rowcount)  # type: ignore[attr-defined]


def over_quota(session: Session, max_count: int, max_bytes: int) -> list[tuple[str, str]]:
    """(device_id, kind) pairs holding more than ``max_count`` records or ``max_bytes``."""
    rows = session.execute(
        select(DeviceRecord.device_id, DeviceRecord.kind)
        .group_by(DeviceRecord.device_id, DeviceRecord.kind)
        .having(
            (func.count() > max_count) | (func.coalesce(func.sum(DeviceRecord.size), 0) > max_bytes)
        )
    ).all()
    return [(str(r[0]), str(r[1])) for r in rows]


def revoked(session: Session) -> list[RevokedCertificate]:
    return list(
        session.execute(
            select(RevokedCertificate).order_by(RevokedCertificate.revoked_at)
        ).scalars()
    )


def active_in_fleet(session: Session, fleet_id: str, *, ek_hash: str, serial: str) -> list[Device]:
    """Active devices of the fleet with this EK or this serial (clone / duplicate check)."""
    return list(
        session.execute(
            select(Device).where(
                Device.fleet_id == fleet_id,
                Device.status == "active",
                (Device.ek_hash == ek_hash) | (Device.serial == serial),
            )
        ).scalars()
    )


def active_among(session: Session, device_ids: list[str]) -> list[str]:
    """The ids in ``device_ids`` of devices that exist and are active."""
    return list(
        session.execute(
            select(Device.id).where(Device.id.in_(device_ids), Device.status == DeviceStatus.ACTIVE)
        ).scalars()
    )


def existing_among(session: Session, device_ids: list[str]) -> list[str]:
    """The ids in ``device_ids`` of devices that exist (any status)."""
    return list(session.execute(select(Device.id).where(Device.id.in_(device_ids))).scalars())
