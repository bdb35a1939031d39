"""Queries over organisations, fleets, memberships and fleet variables (no commits)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from bastion.server.answers import UNCHANGED_OPTION
from bastion.server.orgs.models import (
    Fleet,
    FleetEnvVar,
    FleetMember,
    InvitationState,
    Organisation,
    OrgInvitation,
    OrgMember,
)


def get_org(session: Session, org_id: str) -> Organisation | None:
    return session.get(Organisation, org_id)


def get_org_by_name(session: Session, name: str) -> Organisation | None:
    return session.execute(
        select(Organisation).where(Organisation.name == name)
    ).scalar_one_or_none()


def get_fleet(session: Session, fleet_id: str) -> Fleet | None:
    return session.get(Fleet, fleet_id)


def get_fleet_by_name(session: Session, org_id: str, name: str) -> Fleet | None:
    return session.execute(
        select(Fleet).where(Fleet.org_id == org_id, Fleet.name == name)
    ).scalar_one_or_none()


def org_role(session: Session, org_id: str, user_id: str) -> str | None:
    """``owner``/``member`` or None."""
    member = session.get(OrgMember, (org_id, user_id))
    return member.role if member else None


def fleet_member_role(session: Session, fleet_id: str, user_id: str) -> str | None:
    member = session.get(FleetMember, (fleet_id, user_id))
    return member.role if member else None


def orgs_of_user(session: Session, user_id: str) -> list[tuple[Organisation, str]]:
    rows = session.execute(
        select(Organisation, OrgMember.role)
        .join(OrgMember, OrgMember.org_id == Organisation.id)
        .where(OrgMember.user_id == user_id)
        .order_by(Organisation.name)
    ).all()
    return [(org, role) for org, role in rows]


def fleets_of_org(session: Session, org_id: str) -> list[Fleet]:
    return list(
        session.execute(select(Fleet).where(Fleet.org_id == org_id).order_by(Fleet.name)).scalars()
    )


def fleet_roles_of_user(session: Session, user_id: str) -> dict[str, str]:
    rows = session.execute(
        select(FleetMember.fleet_id, FleetMember.role).where(FleetMember.user_id == user_id)
    ).all()
    return {fleet_id: role for fleet_id, role in rows}


def fleet_members(session: Session, fleet_id: str) -> list[FleetMember]:
    return list(
        session.execute(select(FleetMember).where(FleetMember.fleet_id == fleet_id)).scalars()
    )


def org_members(session: Session, org_id: str) -> list[OrgMember]:
    return list(session.execute(select(OrgMember).where(OrgMember.org_id == org_id)).scalars())


def fleet_env(session: Session, fleet_id: str) -> list[FleetEnvVar]:
    return list(
        session.execute(
            select(FleetEnvVar).where(FleetEnvVar.fleet_id == fleet_id).order_by(FleetEnvVar.name)
        ).scalars()
    )


def count_env(session: Session, fleet_id: str) -> int:
    return len(fleet_env(session, fleet_id))


def delete_env(session: Session, fleet_id: str, name: str) -> int:
    result = session.execute(
        delete(FleetEnvVar).where(FleetEnvVar.fleet_id == fleet_id, FleetEnvVar.name == name)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def get_invitation(session: Session, invitation_id: str) -> OrgInvitation | None:
    return session.get(OrgInvitation, invitation_id)


def pending_invitations_of_org(
    session: Session, org_id: str, now: dt.datetime, limit: int
) -> list[OrgInvitation]:
    return list(
        session.execute(
            select(OrgInvitation)
            .where(
                OrgInvitation.org_id == org_id,
                OrgInvitation.state == InvitationState.PENDING.value,
                OrgInvitation.expires_at > now,
            )
            .order_by(OrgInvitation.created_at, OrgInvitation.id)
            .limit(limit)
        ).scalars()
    )


def count_pending_invitations(session: Session, org_id: str, now: dt.datetime) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(OrgInvitation)
            .where(
                OrgInvitation.org_id == org_id,
                OrgInvitation.state == InvitationState.PENDING.value,
                OrgInvitation.expires_at > now,
            )
        ).scalar_one()
    )


def pending_invitation_for(
    session: Session, org_id: str, email: str, now: dt.datetime
) -> OrgInvitation | None:
    return session.execute(
        select(OrgInvitation)
        .where(
            OrgInvitation.org_id == org_id,
            OrgInvitation.email == email,
            OrgInvitation.state == InvitationState.PENDING.value,
            OrgInvitation.expires_at > now,
        )
        .limit(1)
    ).scalar_one_or_none()


def pending_invitations_for_email(
    session: Session, email: str, now: dt.datetime, limit: int
) -> list[tuple[OrgInvitation, Organisation]]:
    rows = session.execute(
        select(OrgInvitation, Organisation)
        .join(Organisation, Organisation.id == OrgInvitation.org_id)
        .where(
            OrgInvitation.email == email,
            OrgInvitation.state == InvitationState.PENDING.value,
            OrgInvitation.expires_at > now,
        )
        .order_by(OrgInvitation.created_at, OrgInvitation.id)
        .limit(limit)
    ).all()
    return [(inv, org) for inv, org in rows]


def answer_invitation(
    session: Session, invitation_id: str, state: InvitationState, now: dt.datetime
) -> bool:
    """Move a pending invitation to ``state``; False when it was no longer pending.

    One conditional UPDATE, so of two concurrent answers (or an answer and a revoke)
    only one takes effect.
    """
    result = session.execute(
        update(OrgInvitation)
        .where(
            OrgInvitation.id == invitation_id,
            OrgInvitation.state == InvitationState.PENDING.value,
        )
        .values(state=state.value, answered_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


def lock_fleet(session: Session, fleet_id: str) -> None:
    """Hold the fleet row's write lock until the transaction ends (a no-op UPDATE: a row
    lock on PostgreSQL, the database write lock on SQLite): enrolment's uniqueness
    checks and the device insert then run one fleet-wide transaction at a time."""
    session.execute(
        update(Fleet)
        .where(Fleet.id == fleet_id)
        .values(ek_policy=Fleet.ek_policy)
        # changes nothing a device's answer is made of (docs/adr/0044-device-answer-cache.md)
        .execution_options(synchronize_session=False, **{UNCHANGED_OPTION: True})
    )
