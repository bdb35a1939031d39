"""HTTP edge of webhooks (docs/server.md "Webhooks").

=======  ==========================================================  ========
method   path                                                        who
=======  ==========================================================  ========
GET      /v1/fleets/{fleet_id}/webhooks                              operator
POST     /v1/fleets/{fleet_id}/webhooks                              admin
PATCH    /v1/fleets/{fleet_id}/webhooks/{webhook_id}                 admin
DELETE   /v1/fleets/{fleet_id}/webhooks/{webhook_id}                 admin
GET      /v1/fleets/{fleet_id}/webhooks/{webhook_id}/deliveries      operator
=======  ==========================================================  ========

An endpoint receives the fleet's device events and its URL may carry a receiver's
token, so listing needs an operator and changing needs an admin.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Response

from bastion import limits
from bastion.errors import ConfigError
from bastion.server.auth.deps import Ctx, DbSession, FleetAdmin, FleetOperator, ReadSession
from bastion.server.webhooks import service
from bastion.server.webhooks.schemas import (
    DeliveryOut,
    WebhookCreatedOut,
    WebhookIn,
    WebhookOut,
    WebhookPatchIn,
)

router = APIRouter(tags=["webhooks"])


@router.get("/fleets/{fleet_id}/webhooks", response_model=list[WebhookOut])
def list_webhooks(access: FleetOperator, session: ReadSession) -> list[WebhookOut]:
    """The fleet's webhook endpoints (never their secrets)."""
    return [WebhookOut.of(h) for h in service.of_fleet(session, access.fleet_id)]


@router.post("/fleets/{fleet_id}/webhooks", response_model=WebhookCreatedOut, status_code=201)
def create_webhook(
    body: WebhookIn, access: FleetAdmin, session: DbSession, ctx: Ctx
) -> WebhookCreatedOut:
    """Add an endpoint; the answer carries its signing secret, shown this once."""
    if ctx.secret_box is None:
        raise ConfigError("this server has no secret key to seal webhook secrets")
    made = service.create(
        session, access, ctx.secret_box, url=body.url, events=body.events, now=ctx.clock.now()
    )
    return WebhookCreatedOut(**WebhookOut.of(made.webhook).model_dump(), secret=made.secret)


@router.patch("/fleets/{fleet_id}/webhooks/{webhook_id}", response_model=WebhookOut)
def patch_webhook(
    webhook_id: str, body: WebhookPatchIn, access: FleetAdmin, session: DbSession, ctx: Ctx
) -> WebhookOut:
    """Change an endpoint's URL, events or whether it is active."""
    changes = body.model_dump(exclude_unset=True)
    return WebhookOut.of(service.update(session, access, webhook_id, changes, ctx.clock.now()))


@router.delete("/fleets/{fleet_id}/webhooks/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: str, access: FleetAdmin, session: DbSession, ctx: Ctx) -> Response:
    """Remove an endpoint and its delivery log."""
    service.delete(session, access, webhook_id, ctx.clock.now())
    return Response(status_code=204)


@router.get("/fleets/{fleet_id}/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryOut])
def list_deliveries(
    webhook_id: str,
    access: FleetOperator,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=limits.WEBHOOK_DELIVERIES_PAGE_MAX)] = 100,
) -> list[DeliveryOut]:
    """The endpoint's delivery log, newest first."""
    found = service.deliveries(session, access.fleet_id, webhook_id, limit)
    return [DeliveryOut.of(d) for d in found]


def install(app: FastAPI) -> None:
    """Mount the routes."""
    from bastion.server.app import API_PREFIX

    app.include_router(router, prefix=API_PREFIX)
