"""HTTP edge of provisioning keys (fleet admins) and the provisioning-key principal.

``bst_pk_`` bearer tokens resolve to a provisioning-key principal that every route
but ``/enroll/*`` refuses. Resolution only establishes *which* key is calling; the
enrolment service checks revoked / expired / used up / allow-list / rate and audits
each refusal.
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, FastAPI, Response
from sqlalchemy.orm import Session

from bastion.server.auth.deps import Ctx, DbSession, FleetAdmin, ReadSession
from bastion.server.auth.principal import Principal, PrincipalKind, Via, auth_registry
from bastion.server.auth.tokens import check_format
from bastion.server.provisioning import service
from bastion.server.provisioning.policy import PROVISIONING_PREFIX
from bastion.server.provisioning.schemas import (
    ProvisioningKeyCreatedOut,
    ProvisioningKeyIn,
    ProvisioningKeyOut,
)

router = APIRouter(tags=["provisioning"])


def authenticate(session: Session, token: str, now: dt.datetime) -> Principal:
    """A ``bst_pk_`` token -> the provisioning-key principal (AuthError if unknown)."""
    del now
    check_format(token, PROVISIONING_PREFIX)
    key = service.resolve_token(session, token)
    return Principal(
        kind=PrincipalKind.PROVISIONING_KEY,
        id=key.id,
        via=Via.PROVISIONING_KEY,
        fleet_id=key.fleet_id,
    )


@router.post(
    "/fleets/{fleet_id}/provisioning-keys",
    response_model=ProvisioningKeyCreatedOut,
    status_code=201,
)
def create_key(
    body: ProvisioningKeyIn, access: FleetAdmin, session: DbSession, ctx: Ctx
) -> ProvisioningKeyCreatedOut:
    """Create a provisioning key; the key is in this answer only."""
    spec = service.KeySpec(
        name=body.name,
        ttl=dt.timedelta(seconds=body.ttl_seconds),
        max_uses=body.max_uses,
        rate_per_minute=body.rate_per_minute,
        allow_serials=tuple(body.allow_serials),
        allow_ek_hashes=tuple(body.allow_ek_hashes),
        allow_devices=tuple((d.serial, d.ek_sha256) for d in body.allow_devices),
    )
    token, key = service.create(
        session,
        fleet_id=access.fleet_id,
        org_id=access.org_id,
        actor=access.principal.actor,
        spec=spec,
        now=ctx.clock.now(),
    )
    return ProvisioningKeyCreatedOut(**ProvisioningKeyOut.of(key).model_dump(), key=token)


@router.get("/fleets/{fleet_id}/provisioning-keys", response_model=list[ProvisioningKeyOut])
def list_keys(access: FleetAdmin, session: ReadSession) -> list[ProvisioningKeyOut]:
    """Every provisioning key of the fleet (metadata only)."""
    return [ProvisioningKeyOut.of(k) for k in service.list_keys(session, access.fleet_id)]


@router.delete("/fleets/{fleet_id}/provisioning-keys/{key_id}", status_code=204)
def revoke_key(key_id: str, access: FleetAdmin, session: DbSession, ctx: Ctx) -> Response:
    """Revoke a provisioning key (idempotent)."""
    service.revoke(
        session,
        fleet_id=access.fleet_id,
        org_id=access.org_id,
        key_id=key_id,
        actor=access.principal.actor,
        now=ctx.clock.now(),
    )
    return Response(status_code=204)


def install(app: FastAPI) -> None:
    """Mount the routes and register the ``bst_pk_`` authenticator."""
    from bastion.server.app import API_PREFIX

    auth_registry(app).add_token(PROVISIONING_PREFIX, authenticate)
    app.include_router(router, prefix=API_PREFIX)
