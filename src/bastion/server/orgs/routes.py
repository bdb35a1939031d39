"""Organisation and fleet routes (users only; devices use their own routes).

==========  ======================================  ==========================
method      path                                    minimum
==========  ======================================  ==========================
GET, POST   /v1/orgs                                user
GET, PATCH  /v1/orgs/{org_id}                       member / owner
GET         /v1/orgs/{org_id}/members               member
PUT         /v1/orgs/{org_id}/members               owner (change a member's role)
DELETE      /v1/orgs/{org_id}/members/{user_id}     owner
GET, POST   /v1/orgs/{org_id}/invitations           owner
DELETE      /v1/orgs/{org_id}/invitations/{inv_id}  owner (revoke a pending one)
POST        /v1/orgs/{org_id}/leave                 member (session or admin token)
GET         /v1/me/invitations                      user (invitations to my e-mail)
POST        /v1/me/invitations/{inv_id}/accept      invitee (session or admin token)
POST        /v1/me/invitations/{inv_id}/decline     invitee (session or admin token)
GET, POST   /v1/orgs/{org_id}/fleets                member / owner
GET         /v1/orgs/{org_id}/audit                 owner
GET         /v1/fleets                              user
GET, DELETE /v1/fleets/{fleet_id}                   viewer / owner
GET, PUT    /v1/fleets/{fleet_id}/members           viewer / admin
DELETE      /v1/fleets/{fleet_id}/members/{user_id} admin
GET, PUT    /v1/fleets/{fleet_id}/config            viewer / operator
GET         /v1/fleets/{fleet_id}/env               viewer
PUT, DELETE /v1/fleets/{fleet_id}/env/{name}        operator
==========  ======================================  ==========================
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, status

from bastion import limits
from bastion.server.audit.service import list_entries
from bastion.server.auth.deps import (
    Ctx,
    CurrentUser,
    DbSession,
    FleetAdmin,
    FleetOperator,
    FleetOwner,
    FleetViewer,
    OrgMemberAccess,
    OrgOwnerAccess,
    ReadSession,
)
from bastion.server.auth.rbac import OrgRole, Role
from bastion.server.channel.routes import notify_fleet
from bastion.server.ektrust.policy import warning_for
from bastion.server.orgs import invitations, schemas, service
from bastion.server.orgs.models import Fleet, Organisation, OrgInvitation

router = APIRouter(prefix="/v1", tags=["organisations and fleets"])
EnvName = Annotated[str, Path(pattern=schemas.ENV_NAME_PATTERN)]


def _org_out(org: Organisation, role: str) -> schemas.OrgOut:
    return schemas.OrgOut(
        id=org.id,
        name=org.name,
        require_2fa=org.require_2fa,
        role=role,  # type: ignore[arg-type]
        created_at=org.created_at,
        require_oidc=org.require_oidc,
    )


def _fleet_out(fleet: Fleet, role: Role) -> schemas.FleetOut:
    return schemas.FleetOut(
        id=fleet.id,
        org_id=fleet.org_id,
        name=fleet.name,
        role=role.value,
        created_at=fleet.created_at,
        ek_policy=fleet.ek_policy,  # type: ignore[arg-type]
        warning=warning_for(fleet.ek_policy),
    )


@router.post("/orgs", status_code=status.HTTP_201_CREATED)
def create_org(
    body: schemas.OrgCreateIn, principal: CurrentUser, ctx: Ctx, session: DbSession
) -> schemas.OrgOut:
    """Create an organisation; the caller becomes its owner."""
    org = service.create_org(ctx, session, principal, body.name, body.require_2fa)
    return _org_out(org, "owner")


@router.get("/orgs")
def list_orgs(principal: CurrentUser, session: ReadSession) -> list[schemas.OrgOut]:
    """Organisations the caller belongs to."""
    return [_org_out(org, role) for org, role in service.list_orgs(session, principal)]


@router.get("/orgs/{org_id}")
def get_org(access: OrgMemberAccess) -> schemas.OrgOut:
    return _org_out(access.org, access.role.value)


@router.patch("/orgs/{org_id}")
def update_org(
    body: schemas.OrgUpdateIn, access: OrgOwnerAccess, ctx: Ctx, session: DbSession
) -> schemas.OrgOut:
    """Turn 2FA (and OIDC sign-in) enforcement on or off for every member."""
    org = service.update_org(ctx, session, access, body.require_2fa, require_oidc=body.require_oidc)
    return _org_out(org, access.role.value)


@router.get("/orgs/{org_id}/members")
def org_members(access: OrgMemberAccess, session: ReadSession) -> list[schemas.MemberOut]:
    return [
        schemas.MemberOut(user_id=user.id, email=user.email, role=role)
        for user, role in service.org_members(session, access)
    ]


@router.put("/orgs/{org_id}/members")
def set_org_member(
    body: schemas.OrgMemberIn, access: OrgOwnerAccess, ctx: Ctx, session: DbSession
) -> schemas.MemberOut:
    user, role = service.set_org_member(ctx, session, access, body.email, body.role)
    return schemas.MemberOut(user_id=user.id, email=user.email, role=role)


@router.delete("/orgs/{org_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_org_member(user_id: str, access: OrgOwnerAccess, ctx: Ctx, session: DbSession) -> None:
    service.remove_org_member(ctx, session, access, user_id)


@router.post("/orgs/{org_id}/fleets", status_code=status.HTTP_201_CREATED)
def create_fleet(
    body: schemas.FleetCreateIn, access: OrgOwnerAccess, ctx: Ctx, session: DbSession
) -> schemas.FleetOut:
    """Create a fleet in the organisation."""
    fleet = service.create_fleet(ctx, session, access, body.name, body.ek_policy)
    return _fleet_out(fleet, Role.OWNER)


@router.get("/orgs/{org_id}/fleets")
def org_fleets(access: OrgMemberAccess, session: ReadSession) -> list[schemas.FleetOut]:
    return [
        _fleet_out(f, r)
        for f, r in service.visible_fleets(session, access.principal, access.org.id)
    ]


@router.get("/orgs/{org_id}/audit")
def org_audit(
    access: OrgOwnerAccess,
    session: ReadSession,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=limits.API_LIST_MAX)] = 100,
) -> list[schemas.AuditEntryOut]:
    """The organisation's audit entries after sequence number ``after``."""
    out = []
    for entry in list_entries(session, org_id=access.org.id, after=after, limit=limit):
        details: Any = json.loads(entry.details)
        out.append(
            schemas.AuditEntryOut(
                seq=entry.seq,
                at=entry.at,
                actor=entry.actor,
                event=entry.event,
                details=details,
                hash=entry.hash,
            )
        )
    return out


@router.get("/fleets")
def list_fleets(principal: CurrentUser, session: ReadSession) -> list[schemas.FleetOut]:
    """Every fleet the caller holds a role in."""
    return [_fleet_out(f, r) for f, r in service.visible_fleets(session, principal)]


@router.get("/fleets/{fleet_id}")
def get_fleet(access: FleetViewer) -> schemas.FleetOut:
    return _fleet_out(access.fleet, access.role)


@router.delete("/fleets/{fleet_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_fleet(access: FleetOwner, ctx: Ctx, session: DbSession) -> None:
    service.delete_fleet(ctx, session, access)
    # after the commit: every process closes its open channels of the fleet's devices
    notify_fleet(ctx, access.fleet.id, "deleted")


@router.get("/fleets/{fleet_id}/members")
def fleet_members(access: FleetViewer, session: ReadSession) -> list[schemas.MemberOut]:
    return [
        schemas.MemberOut(user_id=user.id, email=user.email, role=role)
        for user, role in service.fleet_members(session, access)
    ]


@router.put("/fleets/{fleet_id}/members")
def set_fleet_member(
    body: schemas.FleetMemberIn, access: FleetAdmin, ctx: Ctx, session: DbSession
) -> schemas.MemberOut:
    """Give an organisation member a role in this fleet."""
    user = service.set_fleet_member(ctx, session, access, body.email, Role(body.role))
    return schemas.MemberOut(user_id=user.id, email=user.email, role=body.role)


@router.delete("/fleets/{fleet_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_fleet_member(user_id: str, access: FleetAdmin, ctx: Ctx, session: DbSession) -> None:
    service.remove_fleet_member(ctx, session, access, user_id)


@router.get("/fleets/{fleet_id}/config")
def get_config(access: FleetViewer, session: ReadSession) -> schemas.FleetConfigOut:
    return schemas.FleetConfigOut(config=service.fleet_config(session, access.fleet.id))


@router.put("/fleets/{fleet_id}/config")
def set_config(
    body: schemas.FleetConfigIn, access: FleetOperator, ctx: Ctx, session: DbSession
) -> schemas.FleetConfigOut:
    return schemas.FleetConfigOut(
        config=service.set_fleet_config(ctx, session, access, body.config)
    )


@router.get("/fleets/{fleet_id}/env")
def list_env(access: FleetViewer, session: ReadSession) -> list[schemas.EnvVarOut]:
    env = service.fleet_environment(session, access.fleet.id)
    return [schemas.EnvVarOut(name=k, value=v) for k, v in sorted(env.items())]


@router.put("/fleets/{fleet_id}/env/{name}")
def set_env(
    name: EnvName, body: schemas.EnvValueIn, access: FleetOperator, ctx: Ctx, session: DbSession
) -> schemas.EnvVarOut:
    row = service.set_env(ctx, session, access, name, body.value)
    return schemas.EnvVarOut(name=row.name, value=row.value)


@router.delete("/fleets/{fleet_id}/env/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_env(name: EnvName, access: FleetOperator, ctx: Ctx, session: DbSession) -> None:
    service.delete_env(ctx, session, access, name)


def _invitation_out(invitation: OrgInvitation, org: Organisation) -> schemas.InvitationOut:
    return schemas.InvitationOut(
        id=invitation.id,
        org_id=org.id,
        org_name=org.name,
        email=invitation.email,
        role=invitation.role,  # type: ignore[arg-type]
        state=invitation.state,  # type: ignore[arg-type]
        created_at=invitation.created_at,
        expires_at=invitation.expires_at,
    )


@router.post("/orgs/{org_id}/invitations", status_code=status.HTTP_201_CREATED)
def invite(
    body: schemas.InvitationIn, access: OrgOwnerAccess, ctx: Ctx, session: DbSession
) -> schemas.InvitationOut:
    """Invite an e-mail address; it joins only when its holder accepts."""
    invitation = invitations.invite(
        ctx, session, access, body.email, OrgRole(body.role), expires_in_days=body.expires_in_days
    )
    return _invitation_out(invitation, access.org)


@router.get("/orgs/{org_id}/invitations")
def org_invitations(
    access: OrgOwnerAccess, ctx: Ctx, session: ReadSession
) -> list[schemas.InvitationOut]:
    """The organisation's pending invitations."""
    return [
        _invitation_out(inv, access.org)
        for inv in invitations.org_invitations(ctx, session, access)
    ]


@router.delete("/orgs/{org_id}/invitations/{invitation_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_invitation(
    invitation_id: str, access: OrgOwnerAccess, ctx: Ctx, session: DbSession
) -> None:
    """Withdraw a pending invitation."""
    invitations.revoke(ctx, session, access, invitation_id)


@router.post("/orgs/{org_id}/leave", status_code=status.HTTP_204_NO_CONTENT)
def leave_org(access: OrgMemberAccess, ctx: Ctx, session: DbSession) -> None:
    """Leave the organisation (and its fleets); its last owner cannot."""
    invitations.leave(ctx, session, access)


@router.get("/me/invitations")
def my_invitations(
    principal: CurrentUser, ctx: Ctx, session: ReadSession
) -> list[schemas.InvitationOut]:
    """Pending invitations addressed to the caller's e-mail."""
    return [
        _invitation_out(inv, org)
        for inv, org in invitations.my_invitations(ctx, session, principal)
    ]


@router.post("/me/invitations/{invitation_id}/accept")
def accept_invitation(
    invitation_id: str, principal: CurrentUser, ctx: Ctx, session: DbSession
) -> schemas.InvitationOut:
    """Accept an invitation: become a member with the offered role."""
    return _invitation_out(*invitations.answer(ctx, session, principal, invitation_id, accept=True))


@router.post("/me/invitations/{invitation_id}/decline")
def decline_invitation(
    invitation_id: str, principal: CurrentUser, ctx: Ctx, session: DbSession
) -> schemas.InvitationOut:
    """Decline an invitation."""
    return _invitation_out(
        *invitations.answer(ctx, session, principal, invitation_id, accept=False)
    )


def install(app: FastAPI) -> None:
    app.include_router(router)
