"""Roles per fleet and the checks that turn a principal into fleet or org access.

Roles, weakest first: ``viewer`` (read), ``operator`` (+ change config, variables,
devices), ``admin`` (+ members, provisioning keys), ``owner`` (+ delete the fleet,
grant owner). An organisation owner is owner of every fleet in the organisation.

Rules, checked in this order by :func:`fleet_access`:

1. only users hold roles: devices and provisioning keys get 403 on user routes;
2. a fleet in an organisation the user is not a member of, or where they hold no
   role, is reported as 404 (its existence is not revealed);
3. an organisation that enforces 2FA refuses principals whose login had no second
   factor (403); one that requires OIDC refuses principals whose login was not made
   through OIDC (403 ``oidc_required``);
4. a personal API token's scopes cap the role: ``read`` -> viewer, ``write`` ->
   operator, ``admin`` -> owner;
5. the capped role must reach the route's minimum (403 otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.orm import Session

from bastion.errors import AuthError, NotFoundError, OidcRequiredError
from bastion.server.auth.principal import Principal, PrincipalKind
from bastion.server.orgs import repository as repo
from bastion.server.orgs.models import Fleet, Organisation


class Role(StrEnum):
    """A user's role in one fleet."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2, Role.OWNER: 3}

#: the strongest role a personal API token with this scope may act with
SCOPE_CAP = {"read": Role.VIEWER, "write": Role.OPERATOR, "admin": Role.OWNER}
SCOPES = tuple(SCOPE_CAP)


class OrgRole(StrEnum):
    """A user's standing in an organisation."""

    OWNER = "owner"
    MEMBER = "member"


@dataclass(frozen=True, slots=True)
class FleetAccess:
    """A user's effective, scope-capped role in one fleet."""

    principal: Principal
    fleet: Fleet
    org: Organisation
    role: Role

    @property
    def fleet_id(self) -> str:
        return self.fleet.id

    @property
    def org_id(self) -> str:
        return self.org.id


@dataclass(frozen=True, slots=True)
class OrgAccess:
    """A user's standing in one organisation."""

    principal: Principal
    org: Organisation
    role: OrgRole


def require_user_principal(principal: Principal) -> None:
    """AuthError unless the caller is a user (401 anonymous, 403 device/provisioning key)."""
    if principal.kind is not PrincipalKind.USER:
        if principal.authenticated:
            raise AuthError(f"a {principal.kind.value} may not use this route")
        raise AuthError("authentication required")


def scope_cap(principal: Principal) -> Role:
    """The strongest role the principal's scopes allow."""
    best: Role | None = None
    for scope in principal.scopes:
        cap = SCOPE_CAP.get(scope)
        if cap is not None and (best is None or cap.rank > best.rank):
            best = cap
    if best is None:
        raise AuthError("token has no scope that allows this route")
    return best


def check_two_factor(principal: Principal, org: Organisation) -> None:
    """AuthError when ``org`` enforces 2FA and the principal's login had none."""
    if org.require_2fa and not principal.two_factor:
        raise AuthError(
            f"organisation {org.name!r} requires two-factor authentication: "
            "enrol TOTP and log in again with a code"
        )


def check_sign_in_method(principal: Principal, org: Organisation) -> None:
    """OidcRequiredError when ``org`` requires OIDC and the principal's login was not."""
    if org.require_oidc and not principal.oidc:
        raise OidcRequiredError(
            f"organisation {org.name!r} requires sign-in through OpenID Connect: "
            "log in with 'bastion login --oidc' (GET /v1/auth/oidc/login)"
        )


def org_access(
    session: Session, principal: Principal, org_id: str, minimum: OrgRole = OrgRole.MEMBER
) -> OrgAccess:
    """The caller's standing in ``org_id``, or NotFoundError/AuthError."""
    require_user_principal(principal)
    org = repo.get_org(session, org_id)
    role = repo.org_role(session, org_id, principal.id) if org else None
    if org is None or role is None:
        raise NotFoundError(f"organisation {org_id!r} not found")
    check_two_factor(principal, org)
    check_sign_in_method(principal, org)
    if minimum is OrgRole.OWNER and (role != OrgRole.OWNER or scope_cap(principal) != Role.OWNER):
        raise AuthError(f"only an owner of organisation {org.name!r} may do this")
    return OrgAccess(principal=principal, org=org, role=OrgRole(role))


def fleet_access(
    session: Session, principal: Principal, fleet_id: str, minimum: Role = Role.VIEWER
) -> FleetAccess:
    """The caller's effective role in ``fleet_id`` (rules in the module docstring)."""
    require_user_principal(principal)
    fleet = repo.get_fleet(session, fleet_id)
    if fleet is None:
        raise NotFoundError(f"fleet {fleet_id!r} not found")
    org_role = repo.org_role(session, fleet.org_id, principal.id)
    if org_role is None:
        raise NotFoundError(f"fleet {fleet_id!r} not found")
    if org_role == OrgRole.OWNER:
        role = Role.OWNER
    else:
        member_role = repo.fleet_member_role(session, fleet_id, principal.id)
        if member_role is None:
            raise NotFoundError(f"fleet {fleet_id!r} not found")
        role = Role(member_role)
    org = repo.get_org(session, fleet.org_id)
    assert org is not None
    check_two_factor(principal, org)
    check_sign_in_method(principal, org)
    cap = scope_cap(principal)
    effective = role if role.rank <= cap.rank else cap
    if effective.rank < minimum.rank:
        raise AuthError(
            f"role {effective.value} in fleet {fleet.name!r} is not enough: {minimum.value} needed"
        )
    return FleetAccess(principal=principal, fleet=fleet, org=org, role=effective)
