"""Queries on devices, their overrides, records and revoked certificates (no commits)."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bastion.server.devices.models import Device, DeviceEnvVar, DeviceRecord, RevokedCertificate
from bastion.server.orgs.models import Fleet


def with_org_by_api_key(session: Session, api_key_hash: str) -> tuple[Device, str] | None:
    row = session.execute(
        select(Device, Fleet.org_id)
        .join(Fleet, Fleet.id == Device.fleet_id)
        .where(Device.api_key_hash == api_key_hash)
    ).first()
    return (row[0], row[1]) if row else None


def with_org_by_cert(session: Session, cert_sha256: str) -> tuple[Device, str] | None:
    row = session.execute(
        select(Device, Fleet.org_id)
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
