"""Queries on releases, release keyrings and fleet targets (no commits)."""

from __future__ import annotations

from sqlalchemy import bindparam, select
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


#: built once (every device's target-release request reads it): the fleet's target
#: release in one statement
_TARGET_RELEASE = (
    select(Release)
    .join(FleetTarget, FleetTarget.release_id == Release.id)
    .where(FleetTarget.fleet_id == bindparam("fleet_id"))
)


def target_release(session: Session, fleet_id: str) -> Release | None:
    """The release the fleet targets (None: no target set)."""
    return session.execute(_TARGET_RELEASE, {"fleet_id": fleet_id}).scalar_one_or_none()
