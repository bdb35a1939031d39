"""Queries on EK CA stores and EK deny-lists (no commits: services own the transaction)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bastion.server.ektrust.models import DeniedEk, FleetEkCa


def cas_of_fleet(session: Session, fleet_id: str) -> list[FleetEkCa]:
    return list(
        session.execute(
            select(FleetEkCa)
            .where(FleetEkCa.fleet_id == fleet_id)
            .order_by(FleetEkCa.added_at, FleetEkCa.id)
        ).scalars()
    )


def ca_by_sha256(session: Session, fleet_id: str, sha256: str) -> FleetEkCa | None:
    return session.execute(
        select(FleetEkCa).where(FleetEkCa.fleet_id == fleet_id, FleetEkCa.sha256 == sha256)
    ).scalar_one_or_none()


def denied(session: Session, fleet_id: str, ek_hash: str) -> DeniedEk | None:
    return session.get(DeniedEk, (fleet_id, ek_hash))


def denylist(session: Session, fleet_id: str) -> list[DeniedEk]:
    return list(
        session.execute(
            select(DeniedEk)
            .where(DeniedEk.fleet_id == fleet_id)
            .order_by(DeniedEk.created_at, DeniedEk.ek_hash)
        ).scalars()
    )
