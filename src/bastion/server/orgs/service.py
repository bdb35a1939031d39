"""Organisations and fleets: create, list, members and roles, config and variables.

Functions take the app context, a session and the :class:`FleetAccess` /
:class:`OrgAccess` already checked by the route's dependency, and own the transaction
(commit with an audit entry). :func:`fleet_environment` and :func:`fleet_config` are
the read API other features (device routes) use.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError, ConflictError, FormatError, LimitError, NotFoundError
from bastion.server.audit.service import record
from bastion.server.auth.principal import Principal
from bastion.server.auth.rbac import FleetAccess, OrgAccess, OrgRole, Role, scope_cap
from bastion.server.context import AppContext
from bastion.server.db.base import new_id
from bastion.server.devices.service import revoke_all_of_fleet
from bastion.server.orgs import repository as repo
from bastion.server.orgs.models import Fleet, FleetEnvVar, FleetMember, Organisation, OrgMember
from bastion.server.users import repository as users_repo
from bastion.server.users.models import User


def create_org(
    ctx: AppContext, session: Session, principal: Principal, name: str, require_2fa: bool
) -> Organisation:
    """A new organisation whose only owner is the caller."""
    if scope_cap(principal) is not Role.OWNER:
        raise AuthError("creating an organisation needs a session or an 'admin' token")
    if require_2fa and not principal.two_factor:
        raise ConflictError("enrol TOTP and log in with it before requiring 2FA for others")
    if repo.get_org_by_name(session, name) is not None:
        raise ConflictError(f"organisation {name!r} already exists")
    now = ctx.clock.now()
    org = Organisation(id=new_id(), name=name, require_2fa=require_2fa, created_at=now)
    session.add(org)
    _flush(session, f"organisation {name!r} already exists")
    session.add(OrgMember(org_id=org.id, user_id=principal.id, role=OrgRole.OWNER.value))
    record(
        session, "org.create", principal.actor, {"org": org.id, "name": name}, org_id=org.id, at=now
    )
    session.commit()
    return org


def update_org(
    ctx: AppContext,
    session: Session,
    access: OrgAccess,
    require_2fa: bool | None,
    *,
    require_oidc: bool | None = None,
) -> Organisation:
    """Change the organisation's 2FA / OIDC enforcement (owner only, checked by the route)."""
    org = session.merge(access.org)
    if require_2fa and not access.principal.two_factor:
        raise ConflictError("enrol TOTP and log in with it before requiring 2FA for others")
    if require_oidc and ctx.oidc is None:
        raise ConflictError("this server has no OpenID provider configured")
    if require_oidc and not access.principal.oidc:
        raise ConflictError("sign in through OIDC yourself before requiring it for others")
    changes: dict[str, bool] = {}
    if require_2fa is not None:
        org.require_2fa = changes["require_2fa"] = require_2fa
    if require_oidc is not None:
        org.require_oidc = changes["require_oidc"] = require_oidc
    record(
        session,
        "org.update",
        access.principal.actor,
        changes,
        org_id=org.id,
        at=ctx.clock.now(),
    )
    session.commit()
    return org


def set_org_member(
    ctx: AppContext, session: Session, access: OrgAccess, email: str, role: str
) -> tuple[User, str]:
    """Change a member's standing (``owner``/``member``); adding someone is an invitation.

    A non-member gets the same NotFoundError whether or not the address has an account.
    """
    user = _member_by_email(session, access.org, email)
    member = session.get(OrgMember, (access.org.id, user.id))
    assert member is not None
    if member.role == OrgRole.OWNER and role != OrgRole.OWNER:
        _keep_an_owner(session, access.org.id, user.id)
    member.role = role
    record(
        session,
        "org.member_set",
        access.principal.actor,
        {"user": user.id, "role": role},
        org_id=access.org.id,
        at=ctx.clock.now(),
    )
    session.commit()
    return user, role


def remove_org_member(ctx: AppContext, session: Session, access: OrgAccess, user_id: str) -> None:
    """Remove a user from the organisation and every fleet in it."""
    member = session.get(OrgMember, (access.org.id, user_id))
    if member is None:
        raise NotFoundError(f"user {user_id!r} is not a member of {access.org.name!r}")
    if member.role == OrgRole.OWNER:
        _keep_an_owner(session, access.org.id, user_id)
    for fleet in repo.fleets_of_org(session, access.org.id):
        row = session.get(FleetMember, (fleet.id, user_id))
        if row is not None:
            session.delete(row)
    session.delete(member)
    record(
        session,
        "org.member_remove",
        access.principal.actor,
        {"user": user_id},
        org_id=access.org.id,
        at=ctx.clock.now(),
    )
    session.commit()


def _keep_an_owner(session: Session, org_id: str, leaving: str) -> None:
    owners = [m for m in repo.org_members(session, org_id) if m.role == OrgRole.OWNER]
    if all(m.user_id == leaving for m in owners):
        raise ConflictError("an organisation must keep at least one owner")


def list_orgs(session: Session, principal: Principal) -> list[tuple[Organisation, str]]:
    return repo.orgs_of_user(session, principal.id)


def org_members(session: Session, access: OrgAccess) -> list[tuple[User, str]]:
    out = []
    for member in repo.org_members(session, access.org.id):
        user = users_repo.get_user(session, member.user_id)
        if user is not None:
            out.append((user, member.role))
    return out


def create_fleet(
    ctx: AppContext, session: Session, access: OrgAccess, name: str, ek_policy: str = "certified"
) -> Fleet:
    """A new fleet in the organisation (organisation owners own it); ``ek_policy`` is how
    its enrolment proves TPM hardware (``any``: a development fleet, audited loudly)."""
    if repo.get_fleet_by_name(session, access.org.id, name) is not None:
        raise ConflictError(f"fleet {name!r} already exists in {access.org.name!r}")
    now = ctx.clock.now()
    fleet = Fleet(
        id=new_id(),
        org_id=access.org.id,
        name=name,
        config="{}",
        created_at=now,
        ek_policy=ek_policy,
    )
    session.add(fleet)
    _flush(session, f"fleet {name!r} already exists in {access.org.name!r}")
    record(
        session,
        "fleet.create",
        access.principal.actor,
        {"fleet": fleet.id, "name": name, "ek_policy": ek_policy},
        org_id=access.org.id,
        at=now,
    )
    session.commit()
    return fleet


def visible_fleets(
    session: Session, principal: Principal, org_id: str | None = None
) -> list[tuple[Fleet, Role]]:
    """Fleets the user holds a role in (all fleets of organisations they own)."""
    out: list[tuple[Fleet, Role]] = []
    roles = repo.fleet_roles_of_user(session, principal.id)
    for org, org_role in repo.orgs_of_user(session, principal.id):
        if org_id is not None and org.id != org_id:
            continue
        if org.require_2fa and not principal.two_factor:
            continue
        if org.require_oidc and not principal.oidc:
            continue
        for fleet in repo.fleets_of_org(session, org.id):
            if org_role == OrgRole.OWNER:
                out.append((fleet, Role.OWNER))
            elif fleet.id in roles:
                out.append((fleet, Role(roles[fleet.id])))
    cap = scope_cap(principal)
    return [(f, r if r.rank <= cap.rank else cap) for f, r in out]


def delete_fleet(ctx: AppContext, session: Session, access: FleetAccess) -> None:
    fleet = session.get(Fleet, access.fleet.id)
    if fleet is None:
        raise NotFoundError(f"fleet {access.fleet.id!r} not found")
    now = ctx.clock.now()
    revoked = revoke_all_of_fleet(session, fleet.id, now)  # certificates stay on the CRL
    session.flush()
    session.delete(fleet)
    record(
        session,
        "fleet.delete",
        access.principal.actor,
        {"fleet": fleet.id, "name": fleet.name, "certificates_revoked": revoked},
        org_id=access.org.id,
        at=now,
    )
    session.commit()


def fleet_members(session: Session, access: FleetAccess) -> list[tuple[User, str]]:
    out = []
    for member in repo.fleet_members(session, access.fleet.id):
        user = users_repo.get_user(session, member.user_id)
        if user is not None:
            out.append((user, member.role))
    return out


def set_fleet_member(
    ctx: AppContext, session: Session, access: FleetAccess, email: str, role: Role
) -> User:
    """Give an organisation member a role in the fleet (admin; owner for owner roles)."""
    user = _member_by_email(session, access.org, email)
    current = repo.fleet_member_role(session, access.fleet.id, user.id)
    touches_owner = role is Role.OWNER or current == Role.OWNER.value
    if touches_owner and access.role is not Role.OWNER:
        raise AuthError("only a fleet owner may grant or change the owner role")
    row = session.get(FleetMember, (access.fleet.id, user.id))
    if row is None:
        session.add(FleetMember(fleet_id=access.fleet.id, user_id=user.id, role=role.value))
    else:
        row.role = role.value
    record(
        session,
        "fleet.member_set",
        access.principal.actor,
        {"fleet": access.fleet.id, "user": user.id, "role": role.value},
        org_id=access.org.id,
        at=ctx.clock.now(),
    )
    session.commit()
    return user


def remove_fleet_member(
    ctx: AppContext, session: Session, access: FleetAccess, user_id: str
) -> None:
    row = session.get(FleetMember, (access.fleet.id, user_id))
    if row is None:
        raise NotFoundError(f"user {user_id!r} has no role in fleet {access.fleet.name!r}")
    if row.role == Role.OWNER.value and access.role is not Role.OWNER:
        raise AuthError("only a fleet owner may remove an owner")
    session.delete(row)
    record(
        session,
        "fleet.member_remove",
        access.principal.actor,
        {"fleet": access.fleet.id, "user": user_id},
        org_id=access.org.id,
        at=ctx.clock.now(),
    )
    session.commit()


def fleet_config(session: Session, fleet_id: str) -> dict[str, Any]:
    """The fleet's configuration object (read API for other features)."""
    fleet = repo.get_fleet(session, fleet_id)
    if fleet is None:
        raise NotFoundError(f"fleet {fleet_id!r} not found")
    value = json.loads(fleet.config)
    assert isinstance(value, dict)
    return value


def set_fleet_config(
    ctx: AppContext, session: Session, access: FleetAccess, config: dict[str, Any]
) -> dict[str, Any]:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > limits.FLEET_CONFIG_MAX_SIZE:
        raise LimitError(
            f"fleet config is {len(text.encode())} bytes, limit {limits.FLEET_CONFIG_MAX_SIZE}"
        )
    fleet = session.get(Fleet, access.fleet.id)
    assert fleet is not None
    fleet.config = text
    record(
        session,
        "fleet.config_set",
        access.principal.actor,
        {"fleet": fleet.id, "keys": sorted(config)[:50]},
        org_id=access.org.id,
        at=ctx.clock.now(),
    )
    session.commit()
    return config


def fleet_environment(session: Session, fleet_id: str) -> dict[str, str]:
    """The fleet's environment variables, name -> value (read API for other features)."""
    return {row.name: row.value for row in repo.fleet_env(session, fleet_id)}


def set_env(
    ctx: AppContext, session: Session, access: FleetAccess, name: str, value: str
) -> FleetEnvVar:
    if "\x00" in value:
        raise FormatError(f"environment variable {name!r} contains a NUL character")
    row = session.get(FleetEnvVar, (access.fleet.id, name))
    if row is None:
        if repo.count_env(session, access.fleet.id) >= limits.ENV_MAX_VARS:
            raise LimitError(f"fleet already has {limits.ENV_MAX_VARS} environment variables")
        row = FleetEnvVar(fleet_id=access.fleet.id, name=name, value=value)
        session.add(row)
    else:
        row.value = value
    record(
        session,
        "fleet.env_set",
        access.principal.actor,
        {"fleet": access.fleet.id, "name": name},
        org_id=access.org.id,
        at=ctx.clock.now(),
    )
    session.commit()
    return row


def delete_env(ctx: AppContext, session: Session, access: FleetAccess, name: str) -> None:
    if repo.delete_env(session, access.fleet.id, name) == 0:
        raise NotFoundError(f"environment variable {name!r} not set in fleet {access.fleet.name!r}")
    record(
        session,
        "fleet.env_delete",
        access.principal.actor,
        {"fleet": access.fleet.id, "name": name},
        org_id=access.org.id,
        at=ctx.clock.now(),
    )
    session.commit()


def _member_by_email(session: Session, org: Organisation, email: str) -> User:
    """The member of ``org`` with ``email``; one NotFoundError for no account or no member.

    The same message either way, so the answer does not reveal who has an account.
    """
    user = users_repo.get_user_by_email(session, email.strip().lower())
    if user is None or repo.org_role(session, org.id, user.id) is None:
        raise NotFoundError(
            f"{email[:64]!r} is not a member of organisation {org.name!r} (invite them first)"
        )
    return user


def _flush(session: Session, conflict: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        raise ConflictError(conflict) from exc
