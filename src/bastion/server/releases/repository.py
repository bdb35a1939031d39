"""Queries on releases, release keyrings and fleet targets (no commits)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import String, bindparam, select
from sqlalchemy.orm import Session

from bastion.server.releases.models import FleetTarget, Release, ReleaseKeyring


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    """The columns of a release a device's target-release answer shows (no manifest, no
    golden statement: those are large and the heartbeat never reads them)."""

    id: str
    version: str
    svn: int
    compatible: str
    sha256: str
    length: int
    source: str
    url: str | None


#: ReleaseRow's columns, in its field order
_ROW_COLUMNS = tuple(getattr(Release, name) for name in ReleaseRow.__slots__)


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


#: built once: :func:`target_release`'s row as the heartbeat reads it (plain columns)
_TARGET_ROW = (
    select(*_ROW_COLUMNS)
    .join(FleetTarget, FleetTarget.release_id == Release.id)
    .where(FleetTarget.fleet_id == bindparam("fleet_id", type_=String))
)
_ROW_BY_ID = select(*_ROW_COLUMNS).where(Release.id == bindparam("release_id", type_=String))


def target_row(session: Session, fleet_id: str) -> ReleaseRow | None:
    """:func:`target_release`'s columns a device's answer shows, on the session's
    connection (no ORM entity: the heartbeat's statement)."""
    row = session.connection().execute(_TARGET_ROW, {"fleet_id": fleet_id}).first()
    return ReleaseRow(*row) if row is not None else None


def row(session: Session, release_id: str) -> ReleaseRow | None:
    """A release's :class:`ReleaseRow` by id (a rollout's release)."""
    found = session.connection().execute(_ROW_BY_ID, {"release_id": release_id}).first()
    return ReleaseRow(*found) if found is not None else None
