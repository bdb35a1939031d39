"""The dashboard's device commands: the list on a device page, queue and cancel forms.

======  ==========================================================  ===========
method  path (under ``/ui``)                                         who
======  ==========================================================  ===========
POST    /fleets/{fleet_id}/devices/{device_id}/commands               operator
POST    /fleets/{fleet_id}/devices/{device_id}/commands/{id}/cancel   operator
======  ==========================================================  ===========

The device page (:mod:`bastion.server.ui.routes`) shows :func:`device_commands`, the
device's newest commands with their status and output. The forms call the same
service functions as ``POST /v1/fleets/{f}/devices/{d}/commands`` and its cancel route
(:mod:`bastion.server.channel.service`), after the same role check (operator), and
then wake the device's channel as the API route does. The dashboard offers the
commands an operator needs by hand (:data:`DASHBOARD_KINDS`); the others (``wipe``,
``rotate-key``, ...) stay on the API and the CLI, and a forged form naming one of them
is refused (422) before any service runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from bastion import limits
from bastion.server.auth.deps import Ctx, DbSession
from bastion.server.auth.rbac import FleetAccess, Role, fleet_access
from bastion.server.channel import service as channel
from bastion.server.channel.models import CommandStatus
from bastion.server.channel.routes import notify
from bastion.server.ui.pages import Actor, PageRoute, see_other

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)

#: the commands the device page's form offers, in its order
DASHBOARD_KINDS = ("reboot", "attest", "collect-logs")
_KIND_PATTERN = "^(" + "|".join(DASHBOARD_KINDS) + ")$"


@dataclass(frozen=True, slots=True)
class CommandView:
    """One command as the device page lists it."""

    id: str
    kind: str
    args: str
    status: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime
    finished_at: dt.datetime | None
    output: str | None

    @property
    def open(self) -> bool:
        return self.status in CommandStatus.OPEN


def device_commands(
    session: Session, access: FleetAccess, device_id: str, now: dt.datetime
) -> tuple[CommandView, ...]:
    """The device's newest commands (expiry applied first, as the API's list does)."""
    rows = channel.list_commands(session, access.fleet_id, device_id, limits.UI_COMMANDS_SHOWN, now)
    return tuple(
        CommandView(
            id=r.id,
            kind=r.kind,
            args="" if r.args == "{}" else r.args,
            status=r.status,
            created_by=r.created_by,
            created_at=r.created_at,
            expires_at=r.expires_at,
            finished_at=r.finished_at,
            output=r.output,
        )
        for r in rows
    )


@router.post("/fleets/{fleet_id}/devices/{device_id}/commands", name="ui.device_command_queue")
def command_queue(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    fleet_id: str,
    device_id: str,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    kind: Annotated[str, Form(pattern=_KIND_PATTERN)],
    ttl_minutes: Annotated[
        int, Form(ge=1, le=limits.COMMAND_TTL_MAX_SECONDS // 60)
    ] = limits.COMMAND_TTL_DEFAULT_SECONDS // 60,
) -> Response:
    """Queue a command (operator, as ``POST /v1/fleets/{f}/devices/{d}/commands``)."""
    access = fleet_access(session, user.principal, fleet_id, Role.OPERATOR)
    row = channel.queue(
        session, access, device_id, kind, {}, ttl_minutes * 60, None, ctx.clock.now()
    )
    notify(ctx, device_id, row.id)
    return see_other(request, "ui.device", fleet_id=fleet_id, device_id=device_id)


@router.post(
    "/fleets/{fleet_id}/devices/{device_id}/commands/{command_id}/cancel",
    name="ui.device_command_cancel",
)
def command_cancel(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    fleet_id: str,
    device_id: str,
    command_id: str,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
) -> Response:
    """Cancel an open command (operator, as ``POST .../commands/{c}/cancel``)."""
    access = fleet_access(session, user.principal, fleet_id, Role.OPERATOR)
    channel.cancel(session, access, device_id, command_id, ctx.clock.now())
    return see_other(request, "ui.device", fleet_id=fleet_id, device_id=device_id)
