"""Queries on releases, release keyrings and fleet targets (no commits)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bastion.server.releases.models import FleetTarget, Release, ReleaseKeyring


def get(session: Session, fleet_id: str, release_id: str) -> Release | None:
    row = session.get(Release, release_id)
    return row if row is not None and row.fleet_id == fleet_id else None


def by_version(session: Session, fleet_id: str, version: str) -> Release | None:
    return session.execute(
        select(Release).where(Release.fleet_id == fleet_id, Release.version == version)
    ).scalar_one_or_none()


def of_fleet(session: Session, fleet_id: str, limit: int) -> list[Release]:
    return list(
        session.execute(
            select(Release)
            .where(Release.fleet_id == fleet_id)
            .order_by(Release.created_at.desc(), Release.id)
            .limit(limit)
        ).scalars()
    )


def keyring(session: Session, fleet_id: str) -> ReleaseKeyring | None:
    return session.get(ReleaseKeyring, fleet_id)


def target(session: Session, fleet_id: str) -> FleetTarget | None:
    return session.get(FleetTarget, fleet_id)


def target_release(session: Session, fleet_id: str) -> Release | None:
    row = session.get(FleetTarget, fleet_id)
    return session.get(Release, row.release_id) if row is not None else None
