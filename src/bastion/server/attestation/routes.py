"""HTTP edge of remote attestation (docs/attestation.md).

=======  ====================================================  ==================
method   path                                                  who
=======  ====================================================  ==================
POST     /v1/device/attestation/challenge                      the device
POST     /v1/device/attestation                                the device
GET      /v1/fleets/{fleet_id}/attestation                     viewer
PUT      /v1/fleets/{fleet_id}/attestation                     admin
GET      /v1/fleets/{fleet_id}/attestation/golden              viewer
POST     /v1/fleets/{fleet_id}/attestation/golden              admin
DELETE   /v1/fleets/{fleet_id}/attestation/golden/{golden_id}  admin
GET      /v1/fleets/{fleet_id}/devices/{device_id}/attestations  viewer
GET      .../devices/{device_id}/attestations/{verdict_id}/eventlog  viewer
=======  ====================================================  ==================

The event log route answers the raw TCG event log the device sent with that verdict
(``application/octet-stream``, for ``tpm2_eventlog``); only a device's newest verdict
keeps its log, older ones answer 404.

Settings and golden values decide which devices get configuration and secrets, so
changing them is an admin's (like the EK CA store). A failed verification is still a
200 with ``ok: false``: the verdict is stored and gates the device.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Response

from bastion.errors import FormatError
from bastion.server.attestation import service
from bastion.server.attestation.schemas import (
    ChallengeOut,
    EvidenceIn,
    GoldenIn,
    GoldenOut,
    SettingsIn,
    SettingsOut,
    VerdictOut,
)
from bastion.server.auth.deps import (
    Ctx,
    DbSession,
    FleetAdmin,
    FleetViewer,
    ReadSession,
    require_kind,
)
from bastion.server.auth.principal import Principal, PrincipalKind

router = APIRouter(tags=["attestation"])
DevicePrincipal = Annotated[Principal, Depends(require_kind(PrincipalKind.DEVICE))]


@router.post("/device/attestation/challenge", response_model=ChallengeOut)
def new_challenge(principal: DevicePrincipal, session: DbSession, ctx: Ctx) -> ChallengeOut:
    """A fresh single-use nonce and the fleet's PCR selection."""
    return ChallengeOut.of(service.challenge(session, principal, ctx.clock.now()))


@router.post("/device/attestation", response_model=VerdictOut)
def attest(
    body: EvidenceIn, principal: DevicePrincipal, session: DbSession, ctx: Ctx
) -> VerdictOut:
    """Verify evidence answering an open challenge; the stored verdict."""
    return VerdictOut.of(service.submit(session, principal, body.evidence, ctx.clock.now()))


@router.get("/fleets/{fleet_id}/attestation", response_model=SettingsOut)
def get_settings(access: FleetViewer, session: ReadSession) -> SettingsOut:
    """The fleet's attestation settings (``enforced``: gating is on and golden values exist)."""
    return SettingsOut.of(service.settings_of(session, access.fleet_id))


@router.put("/fleets/{fleet_id}/attestation", response_model=SettingsOut)
def put_settings(body: SettingsIn, access: FleetAdmin, session: DbSession, ctx: Ctx) -> SettingsOut:
    """Change the given settings."""
    changes = body.model_dump(exclude_unset=True)
    return SettingsOut.of(service.update_settings(session, access, changes, ctx.clock.now()))


@router.get("/fleets/{fleet_id}/attestation/golden", response_model=list[GoldenOut])
def list_golden(access: FleetViewer, session: ReadSession) -> list[GoldenOut]:
    """The fleet's accepted golden-value sets, newest first."""
    return [GoldenOut.of(g) for g in service.list_golden(session, access.fleet_id)]


@router.post("/fleets/{fleet_id}/attestation/golden", response_model=GoldenOut, status_code=201)
def add_golden(body: GoldenIn, access: FleetAdmin, session: DbSession, ctx: Ctx) -> GoldenOut:
    """Accept a golden-values statement signed with the fleet's product key."""
    try:
        raw = base64.b64decode(body.statement, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"statement is not base64: {exc}") from exc
    return GoldenOut.of(service.add_golden(session, access, raw, ctx.clock.now()))


@router.delete("/fleets/{fleet_id}/attestation/golden/{golden_id}", status_code=204)
def remove_golden(golden_id: str, access: FleetAdmin, session: DbSession, ctx: Ctx) -> Response:
    """Stop accepting one golden-value set."""
    service.remove_golden(session, access, golden_id, ctx.clock.now())
    return Response(status_code=204)


@router.get("/fleets/{fleet_id}/devices/{device_id}/attestations", response_model=list[VerdictOut])
def device_history(
    device_id: str,
    access: FleetViewer,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=service.HISTORY_MAX)] = 50,
) -> list[VerdictOut]:
    """The device's verdicts, newest first."""
    return [VerdictOut.of(v) for v in service.history(session, access.fleet_id, device_id, limit)]


@router.get(
    "/fleets/{fleet_id}/devices/{device_id}/attestations/{verdict_id}/eventlog",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def verdict_eventlog(
    device_id: str, verdict_id: int, access: FleetViewer, session: ReadSession
) -> Response:
    """The TCG event log the device sent with this verdict (raw bytes)."""
    raw = service.verdict_eventlog(session, access.fleet_id, device_id, verdict_id)
    return Response(
        content=raw,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="eventlog-{verdict_id}.bin"'},
    )


def install(app: FastAPI) -> None:
    """Mount the routes."""
    from bastion.server.app import API_PREFIX

    app.include_router(router, prefix=API_PREFIX)
