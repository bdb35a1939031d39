"""The dashboard's fleet and organisation pages and their forms (docs/dashboard.md, ADR 0035).

======  ==================================================  =====================
method  path (under ``/ui``)                                 who (as on the API)
======  ==================================================  =====================
GET     ``/`` (the server root) and ``/ui/``                 anyone: 303 onwards
GET     /static/dashboard.css                                anyone
GET     /fleets                                              session
GET     /fleets/{fleet_id}                                   viewer
GET     /fleets/{fleet_id}/members                           viewer
GET     /fleets/{fleet_id}/devices/{device_id}               viewer
POST    /fleets/{fleet_id}/devices/{device_id}/revoke        operator
POST    /fleets/{fleet_id}/devices/{device_id}/commands/...  operator (ui/commands.py)
GET     /fleets/{fleet_id}/provisioning-keys                 admin
POST    /fleets/{fleet_id}/provisioning-keys                 admin
POST    /fleets/{fleet_id}/provisioning-keys/{key_id}/revoke admin
GET     /orgs/{org_id}/members                               organisation member
GET     /orgs/{org_id}/audit                                 organisation owner
GET     /orgs/{org_id}/users/{user_id} (+ 3 POSTs)           owner (ui/admin.py)
======  ==================================================  =====================

Sign-in and sign-out: :mod:`bastion.server.ui.signin`; the account page:
:mod:`bastion.server.ui.account`; device commands: :mod:`bastion.server.ui.commands`;
releases and rollouts: :mod:`bastion.server.ui.releases`; an owner's user page:
:mod:`bastion.server.ui.admin`. :func:`install` mounts them all.

Every page resolves the session cookie (:data:`~bastion.server.ui.pages.Viewer`);
every POST checks origin and CSRF token first (:data:`~bastion.server.ui.pages.Actor`),
then the API's role check (:func:`~bastion.server.auth.rbac.fleet_access` /
:func:`~bastion.server.auth.rbac.org_access` with the API route's minimum), then calls
the same service function as the API route.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Query, Request
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from bastion import limits
from bastion.errors import (
    BastionError,
    SignInRequiredError,
    TamperError,
)
from bastion.server.audit.service import list_entries, verify_chain
from bastion.server.auth.deps import Ctx, DbSession, ReadSession
from bastion.server.auth.rbac import (
    FleetAccess,
    OrgRole,
    Role,
    fleet_access,
    org_access,
)
from bastion.server.devices import service as devices
from bastion.server.orgs import invitations
from bastion.server.orgs import service as orgs
from bastion.server.provisioning import service as provisioning
from bastion.server.provisioning.models import ProvisioningKey
from bastion.server.ui import commands, nav
from bastion.server.ui.pages import (
    Actor,
    PageRoute,
    Viewer,
    nav_links,
    render,
    see_other,
)
from bastion.server.ui.security import (
    PageUser,
    cookie_principal,
)
from bastion.server.ui.views import device_page, fleet_devices

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
root = APIRouter(route_class=PageRoute, include_in_schema=False)
STYLESHEET = "dashboard.css"


@root.get("/", name="ui.root")
def server_root() -> RedirectResponse:
    """The server's root opens the dashboard."""
    return RedirectResponse("/ui/", status_code=303)


@router.get("/", name="ui.home")
def home(request: Request, ctx: Ctx) -> Response:
    """Signed in: the fleets; otherwise the sign-in page."""
    try:
        cookie_principal(ctx, request)
    except SignInRequiredError:
        return see_other(request, "ui.signin")
    return see_other(request, "ui.fleets")


@router.get("/static/dashboard.css", name="ui.css")
def stylesheet() -> Response:
    """The one stylesheet (CSP ``style-src 'self'``)."""
    from bastion.server.ui.pages import TEMPLATES

    css = (TEMPLATES.parent / "static" / STYLESHEET).read_text(encoding="utf-8")
    response = Response(css, media_type="text/css")
    response.headers["Cache-Control"] = "no-store"
    return response


# --- fleets and devices --------------------------------------------------------------------------


def _fleet_nav(request: Request, fleet_id: str, role: Role) -> dict[str, Any]:
    return {
        "fleet_links": nav_links(
            request, nav.NavScope.FLEET, params={"fleet_id": fleet_id}, role=role
        )
    }


def _org_nav(request: Request, org_id: str, role: OrgRole) -> dict[str, Any]:
    return {
        "org_links": nav_links(request, nav.NavScope.ORG, params={"org_id": org_id}, org_role=role)
    }


@router.get("/fleets", name="ui.fleets")
def fleets_page(request: Request, user: Viewer, session: ReadSession) -> Response:
    """The caller's organisations and the fleets they hold a role in."""
    fleets = orgs.visible_fleets(session, user.principal)
    organisations = orgs.list_orgs(session, user.principal)
    return render(
        request,
        "fleets.html",
        {"fleets": fleets, "orgs": organisations},
        user=user,
    )


@router.get("/fleets/{fleet_id}", name="ui.fleet")
def fleet_page(
    request: Request, fleet_id: str, user: Viewer, session: ReadSession, ctx: Ctx
) -> Response:
    """Devices of a fleet: state, last seen, version, slot, verdict, posture deviations."""
    access = fleet_access(session, user.principal, fleet_id, Role.VIEWER)
    from bastion.server.attestation import service as attestation

    return render(
        request,
        "fleet.html",
        {
            "access": access,
            "devices": fleet_devices(session, access, ctx.clock.now()),
            "attestation": attestation.settings_of(session, access.fleet_id),
            **_fleet_nav(request, fleet_id, access.role),
        },
        user=user,
    )


@router.get("/fleets/{fleet_id}/members", name="ui.fleet_members")
def fleet_members_page(
    request: Request, fleet_id: str, user: Viewer, session: ReadSession
) -> Response:
    """The fleet's members and their roles."""
    access = fleet_access(session, user.principal, fleet_id, Role.VIEWER)
    return render(
        request,
        "fleet_members.html",
        {
            "access": access,
            "members": orgs.fleet_members(session, access),
            **_fleet_nav(request, fleet_id, access.role),
        },
        user=user,
    )


@router.get("/fleets/{fleet_id}/devices/{device_id}", name="ui.device")
def device_view(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request, fleet_id: str, device_id: str, user: Viewer, session: DbSession, ctx: Ctx
) -> Response:
    """One device: verdicts with their failure ids, events, logs, commands and their
    results; revoke and the command form for operators. (A write session: listing the
    commands marks the expired ones first, as the API's list does.)"""
    access = fleet_access(session, user.principal, fleet_id, Role.VIEWER)
    now = ctx.clock.now()
    page = device_page(session, access, device_id, now)
    operator = access.role.rank >= Role.OPERATOR.rank
    return render(
        request,
        "device.html",
        {
            "access": access,
            "page": page,
            "commands": commands.device_commands(session, access, device_id, now),
            "command_kinds": commands.DASHBOARD_KINDS,
            "command_ttl_minutes": limits.COMMAND_TTL_DEFAULT_SECONDS // 60,
            "can_command": operator and not page.row.revoked,
            "can_revoke": operator,
            **_fleet_nav(request, fleet_id, access.role),
        },
        user=user,
    )


@router.post("/fleets/{fleet_id}/devices/{device_id}/revoke", name="ui.device_revoke")
def device_revoke(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request, fleet_id: str, device_id: str, user: Actor, session: DbSession, ctx: Ctx
) -> Response:
    """Revoke the device (operator, as ``POST /v1/fleets/{f}/devices/{d}/revoke``)."""
    access = fleet_access(session, user.principal, fleet_id, Role.OPERATOR)
    devices.revoke(
        session,
        fleet_id=access.fleet_id,
        org_id=access.org_id,
        device_id=device_id,
        actor=access.principal.actor,
        now=ctx.clock.now(),
    )
    return see_other(request, "ui.device", fleet_id=fleet_id, device_id=device_id)


# --- provisioning keys ---------------------------------------------------------------------------


def _keys_page(
    request: Request,
    user: PageUser,
    session: Session,
    access: FleetAccess,
    *,
    created: tuple[str, ProvisioningKey] | None = None,
    status: int = 200,
) -> Response:
    return render(
        request,
        "provisioning_keys.html",
        {
            "access": access,
            "keys": provisioning.list_keys(session, access.fleet_id),
            "created": created,
            **_fleet_nav(request, access.fleet_id, access.role),
        },
        user=user,
        status=status,
    )


@router.get("/fleets/{fleet_id}/provisioning-keys", name="ui.provisioning_keys")
def keys_page(request: Request, fleet_id: str, user: Viewer, session: ReadSession) -> Response:
    """The fleet's provisioning keys (admin, as the API's list)."""
    access = fleet_access(session, user.principal, fleet_id, Role.ADMIN)
    return _keys_page(request, user, session, access)


@router.post("/fleets/{fleet_id}/provisioning-keys", name="ui.provisioning_key_create")
def key_create(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    fleet_id: str,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    name: Annotated[str, Form(min_length=1, max_length=limits.NAME_MAX_LENGTH)],
    max_uses: Annotated[int, Form(ge=1, le=limits.PROVISIONING_KEY_MAX_USES)] = 1,
    ttl_hours: Annotated[int, Form(ge=1, le=limits.PROVISIONING_KEY_MAX_TTL_SECONDS // 3600)] = 24,
) -> Response:
    """Create a key (admin); its secret is shown on this answer only (no-store)."""
    access = fleet_access(session, user.principal, fleet_id, Role.ADMIN)
    spec = provisioning.KeySpec(name=name, ttl=dt.timedelta(hours=ttl_hours), max_uses=max_uses)
    token, key = provisioning.create(
        session,
        fleet_id=access.fleet_id,
        org_id=access.org_id,
        actor=access.principal.actor,
        spec=spec,
        now=ctx.clock.now(),
    )
    return _keys_page(request, user, session, access, created=(token, key), status=201)


@router.post(
    "/fleets/{fleet_id}/provisioning-keys/{key_id}/revoke", name="ui.provisioning_key_revoke"
)
def key_revoke(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request, fleet_id: str, key_id: str, user: Actor, session: DbSession, ctx: Ctx
) -> Response:
    """Revoke a key (admin, as ``DELETE /v1/fleets/{f}/provisioning-keys/{k}``)."""
    access = fleet_access(session, user.principal, fleet_id, Role.ADMIN)
    provisioning.revoke(
        session,
        fleet_id=access.fleet_id,
        org_id=access.org_id,
        key_id=key_id,
        actor=access.principal.actor,
        now=ctx.clock.now(),
    )
    return see_other(request, "ui.provisioning_keys", fleet_id=fleet_id)


# --- organisations: members, invitations, audit ---------------------------------------------


@router.get("/orgs/{org_id}/members", name="ui.org_members")
def org_members_page(
    request: Request, org_id: str, user: Viewer, session: ReadSession, ctx: Ctx
) -> Response:
    """Members of the organisation and its sign-in rules; its owners also see pending
    invitations and the form that changes the rules (ui/admin.py)."""
    access = org_access(session, user.principal, org_id, OrgRole.MEMBER)
    pending = (
        invitations.org_invitations(ctx, session, access) if access.role is OrgRole.OWNER else []
    )
    return render(
        request,
        "org_members.html",
        {
            "access": access,
            "members": orgs.org_members(session, access),
            "invitations": pending,
            "oidc_configured": ctx.oidc is not None,
            **_org_nav(request, org_id, access.role),
        },
        user=user,
    )


@router.get("/orgs/{org_id}/audit", name="ui.audit")
def audit_page(
    request: Request,
    org_id: str,
    user: Viewer,
    session: ReadSession,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> Response:
    """The organisation's audit entries and the status of the whole chain (owner)."""
    access = org_access(session, user.principal, org_id, OrgRole.OWNER)
    entries = list_entries(session, org_id=access.org.id, after=after, limit=limits.UI_AUDIT_PAGE)
    rows = [(e, json.loads(e.details)) for e in entries]
    try:
        report = verify_chain(session)
        chain: dict[str, Any] = {"ok": True, "sealed": report.server_id is not None, "detail": ""}
    except TamperError as exc:
        chain = {"ok": False, "sealed": None, "detail": str(exc)}
    except BastionError as exc:  # no audit key attached, unsealed chain
        chain = {"ok": False, "sealed": None, "detail": f"cannot be verified: {exc}"}
    return render(
        request,
        "audit.html",
        {
            "access": access,
            "rows": rows,
            "chain": chain,
            "next_after": entries[-1].seq if len(entries) == limits.UI_AUDIT_PAGE else None,
            **_org_nav(request, org_id, access.role),
        },
        user=user,
    )


def install(app: FastAPI) -> None:
    """Mount the dashboard at ``/ui`` and the root redirect at ``/``."""
    from bastion.server.ui import account, admin, releases, signin

    app.include_router(root)
    app.include_router(router)
    app.include_router(signin.router)
    app.include_router(account.router)
    app.include_router(commands.router)
    app.include_router(releases.router)
    app.include_router(admin.router)
