"""The dashboard's releases and rollouts pages and their forms (docs/dashboard.md).

======  =====================================================  ==========
method  path (under ``/ui``)                                    who
======  =====================================================  ==========
GET     /fleets/{fleet_id}/releases                             viewer
GET     /fleets/{fleet_id}/rollouts                             viewer
POST    /fleets/{fleet_id}/rollouts                             operator
GET     /fleets/{fleet_id}/rollouts/{rollout_id}                viewer
POST    /fleets/{fleet_id}/rollouts/{rollout_id}/pause          operator
POST    /fleets/{fleet_id}/rollouts/{rollout_id}/resume         operator
POST    /fleets/{fleet_id}/rollouts/{rollout_id}/abort          operator
======  =====================================================  ==========

Each route checks the API route's minimum role (:func:`~bastion.server.auth.rbac.fleet_access`)
and calls the same service function (:mod:`bastion.server.releases.service`,
:mod:`bastion.server.rollouts.service`). The start form makes the common rollouts:
an optional canary wave (a percentage of the fleet that pauses the rollout on its first
failure) and then the rest of the fleet; plans with tags or device lists stay with the
API and ``bastion rollout start``. The pages are the ``ui.releases`` and ``ui.rollouts``
entries of the fleet's navigation (:mod:`bastion.server.ui.nav`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from bastion.server.auth.deps import Ctx, DbSession, ReadSession
from bastion.server.auth.rbac import FleetAccess, Role, fleet_access
from bastion.server.releases import service as releases
from bastion.server.rollouts import service as rollouts
from bastion.server.rollouts.models import RolloutState
from bastion.server.ui import nav
from bastion.server.ui.pages import Actor, PageRoute, Viewer, nav_links, render, see_other
from bastion.server.ui.security import PageUser

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


def _tabs(request: Request, access: FleetAccess) -> dict[str, Any]:
    return {
        "fleet_links": nav_links(
            request, nav.NavScope.FLEET, params={"fleet_id": access.fleet_id}, role=access.role
        )
    }


def _operator(access: FleetAccess) -> bool:
    return access.role.rank >= Role.OPERATOR.rank


@router.get("/fleets/{fleet_id}/releases", name="ui.releases")
def releases_page(request: Request, fleet_id: str, user: Viewer, session: ReadSession) -> Response:
    """The fleet's releases, newest first, and its target release."""
    access = fleet_access(session, user.principal, fleet_id, Role.VIEWER)
    return render(
        request,
        "releases.html",
        {
            "access": access,
            "releases": releases.list_releases(session, access.fleet_id),
            "target": releases.target_of(session, access.fleet_id),
            **_tabs(request, access),
        },
        user=user,
    )


def _rollouts_page(
    request: Request, user: PageUser, session: Session, access: FleetAccess
) -> Response:
    return render(
        request,
        "rollouts.html",
        {
            "access": access,
            "rollouts": rollouts.list_rollouts(session, access.fleet_id),
            "releases": releases.list_releases(session, access.fleet_id),
            "can_start": _operator(access),
            **_tabs(request, access),
        },
        user=user,
    )


@router.get("/fleets/{fleet_id}/rollouts", name="ui.rollouts")
def rollouts_page(request: Request, fleet_id: str, user: Viewer, session: ReadSession) -> Response:
    """The fleet's rollouts, newest first; operators get the start form."""
    access = fleet_access(session, user.principal, fleet_id, Role.VIEWER)
    return _rollouts_page(request, user, session, access)


@router.post("/fleets/{fleet_id}/rollouts", name="ui.rollout_start")
def rollout_start(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    fleet_id: str,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    release_id: Annotated[str, Form(min_length=1, max_length=64)],
    canary_percent: Annotated[int, Form(ge=0, le=99)] = 0,
) -> Response:
    """Start a rollout (operator, as ``POST /v1/fleets/{f}/rollouts``): an optional canary
    wave of ``canary_percent`` of the fleet, then the rest."""
    access = fleet_access(session, user.principal, fleet_id, Role.OPERATOR)
    waves = []
    if canary_percent:
        waves.append(
            rollouts.WaveSpec(name="canary", canary=True, percent=canary_percent, failure_percent=0)
        )
    waves.append(rollouts.WaveSpec(name="fleet", percent=100 - canary_percent))
    rollout = rollouts.start(session, access, release_id, waves, ctx.clock.now())
    return see_other(request, "ui.rollout", fleet_id=fleet_id, rollout_id=rollout.id)


@router.get("/fleets/{fleet_id}/rollouts/{rollout_id}", name="ui.rollout")
def rollout_page(
    request: Request, fleet_id: str, rollout_id: str, user: Viewer, session: ReadSession
) -> Response:
    """One rollout: per-wave progress, the devices that went wrong; operators get
    pause, resume and abort."""
    access = fleet_access(session, user.principal, fleet_id, Role.VIEWER)
    view = rollouts.status(session, access.fleet_id, rollout_id)
    state = view.rollout.state
    return render(
        request,
        "rollout.html",
        {
            "access": access,
            "view": view,
            "can_pause": _operator(access) and state == RolloutState.RUNNING,
            "can_resume": _operator(access) and state == RolloutState.PAUSED,
            "can_abort": _operator(access) and state in RolloutState.ACTIVE,
            **_tabs(request, access),
        },
        user=user,
    )


def _action(name: str) -> None:
    act = getattr(rollouts, name)

    def route(  # noqa: PLR0917 - FastAPI injects parameters by name
        request: Request, fleet_id: str, rollout_id: str, user: Actor, session: DbSession, ctx: Ctx
    ) -> Response:
        access = fleet_access(session, user.principal, fleet_id, Role.OPERATOR)
        act(session, access, rollout_id, ctx.clock.now())
        return see_other(request, "ui.rollout", fleet_id=fleet_id, rollout_id=rollout_id)

    route.__name__ = f"rollout_{name}"
    route.__doc__ = f"{name.capitalize()} the rollout (operator, as the API's ``/{name}``)."
    router.post(f"/fleets/{{fleet_id}}/rollouts/{{rollout_id}}/{name}", name=f"ui.rollout_{name}")(
        route
    )


for _name in ("pause", "resume", "abort"):
    _action(_name)
