"""HTTP edge of a fleet's EK trust: EK policy, EK CA trust store, EK deny-list.

==============  ==============================================  ===============
method          path                                            minimum
==============  ==============================================  ===============
GET, PUT        /v1/fleets/{fleet_id}/ek-policy                 viewer / owner
GET, POST       /v1/fleets/{fleet_id}/ek-cas                    viewer / admin
DELETE          /v1/fleets/{fleet_id}/ek-cas/{ca_id}            admin
GET, POST       /v1/fleets/{fleet_id}/ek-denylist               viewer / operator
DELETE          /v1/fleets/{fleet_id}/ek-denylist/{ek_sha256}   admin
==============  ==============================================  ===============

Lowering the policy is an owner's decision (``any`` admits software TPMs); adding a
CA widens what counts as hardware (admin); denying an EK only narrows (operator, like
revoking a device); lifting a denial re-admits a revoked TPM (admin).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Response

from bastion.server.auth.deps import (
    Ctx,
    DbSession,
    FleetAdmin,
    FleetOperator,
    FleetOwner,
    FleetViewer,
    ReadSession,
)
from bastion.server.ektrust import service
from bastion.server.ektrust.schemas import (
    DeniedEkIn,
    DeniedEkOut,
    EkCaIn,
    EkCaOut,
    EkPolicyIn,
    EkPolicyOut,
)

router = APIRouter(tags=["EK trust"])


@router.get("/fleets/{fleet_id}/ek-policy", response_model=EkPolicyOut)
def get_policy(access: FleetViewer) -> EkPolicyOut:
    """The fleet's EK policy (with the development warning for ``any``)."""
    return EkPolicyOut.of(access.fleet_id, access.fleet.ek_policy)


@router.put("/fleets/{fleet_id}/ek-policy", response_model=EkPolicyOut)
def set_policy(body: EkPolicyIn, access: FleetOwner, session: DbSession, ctx: Ctx) -> EkPolicyOut:
    """Set the fleet's EK policy: certified, allow-list or any (development only)."""
    fleet = service.set_policy(session, access, body.ek_policy, ctx.clock.now())
    return EkPolicyOut.of(fleet.id, fleet.ek_policy)


@router.get("/fleets/{fleet_id}/ek-cas", response_model=list[EkCaOut])
def list_cas(access: FleetViewer, session: ReadSession) -> list[EkCaOut]:
    """The TPM manufacturer CA certificates this fleet trusts."""
    return [EkCaOut.of(r) for r in service.list_cas(session, access.fleet_id)]


@router.post("/fleets/{fleet_id}/ek-cas", response_model=EkCaOut, status_code=201)
def add_ca(body: EkCaIn, access: FleetAdmin, session: DbSession, ctx: Ctx) -> EkCaOut:
    """Trust a TPM manufacturer CA certificate (PEM) to certify EKs."""
    return EkCaOut.of(service.add_ca(session, access, body.certificate, body.name, ctx.clock.now()))


@router.delete("/fleets/{fleet_id}/ek-cas/{ca_id}", status_code=204)
def remove_ca(ca_id: str, access: FleetAdmin, session: DbSession, ctx: Ctx) -> Response:
    """Stop trusting a CA (by id or SHA-256)."""
    service.remove_ca(session, access, ca_id, ctx.clock.now())
    return Response(status_code=204)


@router.get("/fleets/{fleet_id}/ek-denylist", response_model=list[DeniedEkOut])
def list_denied(access: FleetViewer, session: ReadSession) -> list[DeniedEkOut]:
    """EKs that may not enrol into this fleet (revoked devices' EKs and operator denials)."""
    return [DeniedEkOut.of(r) for r in service.list_denied(session, access.fleet_id)]


@router.post("/fleets/{fleet_id}/ek-denylist", response_model=DeniedEkOut, status_code=201)
def deny(body: DeniedEkIn, access: FleetOperator, session: DbSession, ctx: Ctx) -> DeniedEkOut:
    """Deny an EK by its SHA-256 (idempotent)."""
    row = service.deny_by_operator(session, access, body.ek_sha256, body.reason, ctx.clock.now())
    return DeniedEkOut.of(row)


@router.delete("/fleets/{fleet_id}/ek-denylist/{ek_sha256}", status_code=204)
def lift(ek_sha256: str, access: FleetAdmin, session: DbSession, ctx: Ctx) -> Response:
    """Lift a denial: the EK may enrol again."""
    service.lift(session, access, ek_sha256, ctx.clock.now())
    return Response(status_code=204)


def install(app: FastAPI) -> None:
    """Mount the routes."""
    from bastion.server.app import API_PREFIX

    app.include_router(router, prefix=API_PREFIX)
