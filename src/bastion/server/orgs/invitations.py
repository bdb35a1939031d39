"""Invitations: nobody joins an organisation without saying yes.

An owner invites an e-mail address with a role; the answer is the same whether or not
an account holds that address (no account enumeration). The holder of the address
lists their pending invitations and accepts or declines each; an invitation is
answered once (a conditional UPDATE, so concurrent answers cannot both win), expires,
and can be revoked by an owner while pending. A member may leave an organisation,
except its last owner. Every change is audited in the organisation's log.

Answering or leaving changes who the caller is trusted by, so it needs a login session
or an ``admin`` personal token (like creating an organisation).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError, ConflictError, LimitError, NotFoundError
from bastion.server.audit.service import record
from bastion.server.auth.principal import Principal
from bastion.server.auth.rbac import OrgAccess, OrgRole, Role, require_user_principal, scope_cap
from bastion.server.context import AppContext
from bastion.server.db.base import new_id
from bastion.server.orgs import repository as repo
from bastion.server.orgs.models import (
    FleetMember,
    InvitationState,
    Organisation,
    OrgInvitation,
    OrgMember,
)
from bastion.server.users import repository as users_repo
from bastion.server.users.service import normalise_email


def invite(
    ctx: AppContext,
    session: Session,
    access: OrgAccess,
    email: str,
    role: OrgRole,
    *,
    expires_in_days: int,
) -> OrgInvitation:
    """A pending invitation for ``email`` (owner only, checked by the route).

    ConflictError when the address already belongs to a member (members are visible
    to the owner anyway) or already has a pending invitation; never says whether an
    account exists.
    """
    address = normalise_email(email)
    now = ctx.clock.now()
    user = users_repo.get_user_by_email(session, address)
    if user is not None and repo.org_role(session, access.org.id, user.id) is not None:
        raise ConflictError(f"{address} is already a member of {access.org.name!r}")
    if repo.pending_invitation_for(session, access.org.id, address, now) is not None:
        raise ConflictError(f"{address} already has a pending invitation to {access.org.name!r}")
    if (
        repo.count_pending_invitations(session, access.org.id, now)
        >= limits.INVITATIONS_MAX_PENDING
    ):
        raise LimitError(
            f"organisation {access.org.name!r} already has "
            f"{limits.INVITATIONS_MAX_PENDING} pending invitations"
        )
    days = min(expires_in_days, limits.INVITATION_TTL_DAYS_MAX)
    invitation = OrgInvitation(
        id=new_id(),
        org_id=access.org.id,
        email=address,
        role=role.value,
        invited_by=access.principal.id,
        state=InvitationState.PENDING.value,
        created_at=now,
        expires_at=now + dt.timedelta(days=days),
    )
    session.add(invitation)
    record(
        session,
        "org.invite",
        access.principal.actor,
        {"invitation": invitation.id, "email": address, "role": role.value},
        org_id=access.org.id,
        at=now,
    )
    session.commit()
    return invitation


def org_invitations(ctx: AppContext, session: Session, access: OrgAccess) -> list[OrgInvitation]:
    """The organisation's pending, unexpired invitations (owner only)."""
    return repo.pending_invitations_of_org(
        session, access.org.id, ctx.clock.now(), limits.API_LIST_MAX
    )


def revoke(ctx: AppContext, session: Session, access: OrgAccess, invitation_id: str) -> None:
    """Withdraw a pending invitation of this organisation (owner only)."""
    invitation = repo.get_invitation(session, invitation_id)
    if invitation is None or invitation.org_id != access.org.id:
        raise NotFoundError(f"invitation {invitation_id!r} not found")
    now = ctx.clock.now()
    if not repo.answer_invitation(session, invitation.id, InvitationState.REVOKED, now):
        session.refresh(invitation)
        raise ConflictError(f"invitation {invitation_id!r} is already {invitation.state}")
    record(
        session,
        "org.invitation_revoke",
        access.principal.actor,
        {"invitation": invitation.id, "email": invitation.email},
        org_id=access.org.id,
        at=now,
    )
    session.commit()


def my_invitations(
    ctx: AppContext, session: Session, principal: Principal
) -> list[tuple[OrgInvitation, Organisation]]:
    """Pending, unexpired invitations addressed to the caller's e-mail."""
    require_user_principal(principal)
    user = users_repo.get_user(session, principal.id)
    if user is None:
        raise NotFoundError("user not found")
    return repo.pending_invitations_for_email(
        session, user.email, ctx.clock.now(), limits.API_LIST_MAX
    )


def _require_strong(principal: Principal, what: str) -> None:
    require_user_principal(principal)
    if scope_cap(principal) is not Role.OWNER:
        raise AuthError(f"{what} needs a login session or an 'admin' token")


def answer(
    ctx: AppContext, session: Session, principal: Principal, invitation_id: str, *, accept: bool
) -> tuple[OrgInvitation, Organisation]:
    """Accept (become a member with the offered role) or decline an invitation.

    Only the holder of the invited address may answer; anyone else is told the
    invitation does not exist. An invitation that is answered, revoked or expired
    cannot be answered (ConflictError).
    """
    _require_strong(principal, "answering an invitation")
    user = users_repo.get_user(session, principal.id)
    invitation = repo.get_invitation(session, invitation_id)
    if user is None or invitation is None or invitation.email != user.email:
        raise NotFoundError(f"invitation {invitation_id!r} not found")
    org = repo.get_org(session, invitation.org_id)
    assert org is not None  # the foreign key cascades
    now = ctx.clock.now()
    if invitation.state != InvitationState.PENDING:
        raise ConflictError(f"invitation {invitation_id!r} is already {invitation.state}")
    if invitation.expires_at <= now:
        raise ConflictError(
            f"invitation {invitation_id!r} expired at {invitation.expires_at.isoformat()}"
        )
    if accept and repo.org_role(session, org.id, user.id) is not None:
        raise ConflictError(f"you are already a member of {org.name!r}")
    state = InvitationState.ACCEPTED if accept else InvitationState.DECLINED
    if not repo.answer_invitation(session, invitation.id, state, now):
        raise ConflictError(f"invitation {invitation_id!r} was answered or revoked meanwhile")
    if accept:
        session.add(OrgMember(org_id=org.id, user_id=user.id, role=invitation.role))
        try:
            session.flush()
        except IntegrityError as exc:
            raise ConflictError(f"you are already a member of {org.name!r}") from exc
    record(
        session,
        "org.invitation_accept" if accept else "org.invitation_decline",
        principal.actor,
        {"invitation": invitation.id, "role": invitation.role},
        org_id=org.id,
        at=now,
    )
    session.commit()
    session.refresh(invitation)
    return invitation, org


def leave(ctx: AppContext, session: Session, access: OrgAccess) -> None:
    """The caller leaves the organisation and its fleets; its last owner cannot."""
    _require_strong(access.principal, "leaving an organisation")
    user_id = access.principal.id
    member = session.get(OrgMember, (access.org.id, user_id))
    if member is None:
        raise NotFoundError(f"organisation {access.org.id!r} not found")
    if member.role == OrgRole.OWNER:
        owners = [m for m in repo.org_members(session, access.org.id) if m.role == OrgRole.OWNER]
        if all(m.user_id == user_id for m in owners):
            raise ConflictError(
                f"you are the last owner of {access.org.name!r}: make another member owner first"
            )
    for fleet in repo.fleets_of_org(session, access.org.id):
        row = session.get(FleetMember, (fleet.id, user_id))
        if row is not None:
            session.delete(row)
    session.delete(member)
    record(
        session,
        "org.member_leave",
        access.principal.actor,
        {"user": user_id},
        org_id=access.org.id,
        at=ctx.clock.now(),
    )
    session.commit()
