"""Queries on attestation settings, golden statements, nonces and verdicts (no commits)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bastion.server.attestation.models import (
    AttestationNonce,
    AttestationVerdict,
    FleetAttestation,
    FleetGolden,
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


def golden_count(session: Session, fleet_id: str) -> int:
    return int(
        session.execute(
            select(func.count()).select_from(FleetGolden).where(FleetGolden.fleet_id == fleet_id)
        ).scalar_one()
    )


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
