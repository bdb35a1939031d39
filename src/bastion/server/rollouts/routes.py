"""HTTP edge of rollouts, device update targets and signed reports, device tags.

========  ====================================================  ==================
method    path                                                  who
========  ====================================================  ==================
GET       /v1/device/target-release                             attested device
POST      /v1/device/update/report-nonce                        device
POST      /v1/device/update/report                              device
POST      /v1/fleets/{fleet_id}/rollouts                        operator
GET       /v1/fleets/{fleet_id}/rollouts                        viewer
GET       /v1/fleets/{fleet_id}/rollouts/{rollout_id}           viewer
POST      /v1/fleets/{fleet_id}/rollouts/{rollout_id}/pause     operator
POST      /v1/fleets/{fleet_id}/rollouts/{rollout_id}/resume    operator
POST      /v1/fleets/{fleet_id}/rollouts/{rollout_id}/abort     operator
GET       /v1/fleets/{fleet_id}/devices/{device_id}/update-reports  viewer
GET       /v1/fleets/{fleet_id}/devices/{device_id}/tags        viewer
PUT       /v1/fleets/{fleet_id}/devices/{device_id}/tags/{tag}  operator
DELETE    /v1/fleets/{fleet_id}/devices/{device_id}/tags/{tag}  operator
========  ====================================================  ==================

The target route hands out what to install, so it is attestation-gated like config;
the report routes keep the plain device principal (a device that fell back must still
be able to say so). A refused report is 400 (malformed) or 403 (signature, nonce,
device): it never changes a rollout.
"""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from sqlalchemy.orm import Session

from bastion.server.attestation.gate import DeviceRoute, device_call
from bastion.server.auth.deps import (
    Ctx,
    DbSession,
    FleetOperator,
    FleetViewer,
    ReadSession,
    require_kind,
)
from bastion.server.auth.principal import Principal, PrincipalKind
from bastion.server.context import AppContext
from bastion.server.rollouts import service
from bastion.server.rollouts.schemas import (
    NonceOut,
    ReportAcceptedOut,
    ReportIn,
    ReportOut,
    RolloutIn,
    RolloutOut,
    RolloutStatusOut,
    TagsOut,
    TargetOut,
)

router = APIRouter(tags=["rollouts"])
DevicePrincipal = Annotated[Principal, Depends(require_kind(PrincipalKind.DEVICE))]
Tag = Annotated[str, Path(pattern=service.TAG_PATTERN)]


@router.get("/device/target-release", response_model=TargetOut)
async def get_target(request: Request) -> TargetOut:
    """The release this device should run, and where to fetch it (attestation-gated)."""
    return await device_call(request, TARGET)


def _target(session: Session, principal: Principal, ctx: AppContext) -> TargetOut:
    found = service.target(session, principal, ctx.clock.now(), write=False)
    if found is not None:
        return TargetOut.of(found)
    # the device needs a wave of the active rollout first: a write session assigns it
    with ctx.db.session(write=True) as write:
        return TargetOut.of(service.target(write, principal, ctx.clock.now()))


#: ``GET /v1/device/target-release``, also answered by :mod:`bastion.server.hotpath`
TARGET = DeviceRoute(work=_target, attested=True, model=TargetOut)


@router.post("/device/update/report-nonce", response_model=NonceOut)
def new_nonce(principal: DevicePrincipal, session: DbSession, ctx: Ctx) -> NonceOut:
    """A fresh single-use nonce the next signed report must carry."""
    row = service.report_nonce(session, principal, ctx.clock.now())
    return NonceOut(nonce=base64.b64encode(row.nonce).decode(), expires_at=row.expires_at)


@router.post("/device/update/report", response_model=ReportAcceptedOut)
def post_report(
    body: ReportIn, principal: DevicePrincipal, session: DbSession, ctx: Ctx
) -> ReportAcceptedOut:
    """A report signed in the TPM by the device's identity key, with an open nonce."""
    outcome = service.submit_report(session, principal, body.raw(), ctx.clock.now())
    return ReportAcceptedOut.of_outcome(outcome)


@router.post("/fleets/{fleet_id}/rollouts", response_model=RolloutStatusOut, status_code=201)
def start(body: RolloutIn, access: FleetOperator, session: DbSession, ctx: Ctx) -> RolloutStatusOut:
    """Start a rollout of one of the fleet's releases."""
    specs = [w.spec() for w in body.waves]
    rollout = service.start(session, access, body.release_id, specs, ctx.clock.now())
    return RolloutStatusOut.of_view(service.status(session, access.fleet_id, rollout.id))


@router.get("/fleets/{fleet_id}/rollouts", response_model=list[RolloutOut])
def list_rollouts(access: FleetViewer, session: ReadSession) -> list[RolloutOut]:
    """The fleet's rollouts, newest first."""
    return [RolloutOut.of(r) for r in service.list_rollouts(session, access.fleet_id)]


@router.get("/fleets/{fleet_id}/rollouts/{rollout_id}", response_model=RolloutStatusOut)
def show(rollout_id: str, access: FleetViewer, session: ReadSession) -> RolloutStatusOut:
    """Progress per wave, and the devices that fell back or failed with their reasons."""
    return RolloutStatusOut.of_view(service.status(session, access.fleet_id, rollout_id))


def _act(name: str) -> None:
    action = getattr(service, name)

    def route(
        rollout_id: str, access: FleetOperator, session: DbSession, ctx: Ctx
    ) -> RolloutStatusOut:
        action(session, access, rollout_id, ctx.clock.now())
        return RolloutStatusOut.of_view(service.status(session, access.fleet_id, rollout_id))

    route.__name__ = f"{name}_rollout"
    route.__doc__ = f"{name.capitalize()} the rollout."
    router.post(
        f"/fleets/{{fleet_id}}/rollouts/{{rollout_id}}/{name}", response_model=RolloutStatusOut
    )(route)


for _name in ("pause", "resume", "abort"):
    _act(_name)


@router.get("/fleets/{fleet_id}/devices/{device_id}/update-reports", response_model=list[ReportOut])
def device_reports(
    device_id: str,
    access: FleetViewer,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=service.REPORTS_MAX)] = 50,
) -> list[ReportOut]:
    """The device's verified update reports, newest first."""
    found = service.device_reports(session, access.fleet_id, device_id, limit)
    return [ReportOut.of(r) for r in found]


@router.get("/fleets/{fleet_id}/devices/{device_id}/tags", response_model=TagsOut)
def get_tags(device_id: str, access: FleetViewer, session: ReadSession) -> TagsOut:
    """The device's tags."""
    return TagsOut(tags=service.tags_of(session, access.fleet_id, device_id))


@router.put("/fleets/{fleet_id}/devices/{device_id}/tags/{tag}", status_code=204)
def put_tag(
    device_id: str, tag: Tag, access: FleetOperator, session: DbSession, ctx: Ctx
) -> Response:
    """Tag the device (rollout waves select by tag)."""
    service.add_tag(session, access, device_id, tag, ctx.clock.now())
    return Response(status_code=204)


@router.delete("/fleets/{fleet_id}/devices/{device_id}/tags/{tag}", status_code=204)
def delete_tag(
    device_id: str, tag: Tag, access: FleetOperator, session: DbSession, ctx: Ctx
) -> Response:
    """Remove a tag."""
    service.remove_tag(session, access, device_id, tag, ctx.clock.now())
    return Response(status_code=204)


def install(app: FastAPI) -> None:
    """Mount the routes."""
    from bastion.server.app import API_PREFIX

    app.include_router(router, prefix=API_PREFIX)
