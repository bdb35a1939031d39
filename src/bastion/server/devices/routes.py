"""HTTP edge of devices: the device's own routes, operator routes, the CRL.

Device routes (``/api/v1/device...``) accept only a device principal (API key or mTLS
certificate) and never take a device id: balena's least privilege. Every request a
device authenticates refreshes its ``last_seen_at`` (at most once a minute), whatever
route it calls. Operator routes
(``/api/v1/fleets/{fleet_id}/devices...``) use fleet RBAC: viewer reads, operator
revokes and sets overrides, admin deletes. Revoking or deleting publishes
``device:<id>`` on the server bus after the commit, so the process holding the device's
command channel closes it at once (ADR 0033). ``GET /api/v1/crl`` (DER) and
``GET /api/v1/ca`` (PEM) are public.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

from cryptography import x509
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError, ConfigError, LimitError
from bastion.server.attestation.gate import DeviceRoute, device_call
from bastion.server.auth.deps import (
    Ctx,
    CurrentPrincipal,
    DbSession,
    FleetAdmin,
    FleetOperator,
    FleetViewer,
    ReadSession,
    require_kind,
)
from bastion.server.auth.principal import Principal, PrincipalKind, auth_registry
from bastion.server.channel.routes import notify
from bastion.server.context import AppContext, app_context
from bastion.server.devices import service
from bastion.server.devices.ca import DeviceCa
from bastion.server.devices.schemas import (
    ENV_NAME_PATTERN,
    AcceptedOut,
    DeviceConfigOut,
    DeviceDetailOut,
    DeviceOut,
    DevicePatchIn,
    EnvValueIn,
    EventPageOut,
    EventRecordOut,
    EventsIn,
    LogPageOut,
    LogRecordOut,
    LogsIn,
)
from bastion.server.provisioning.policy import DEVICE_KEY_PREFIX

router = APIRouter(tags=["devices"])
_A = TypeVar("_A", bound=Callable[..., Principal])
DevicePrincipal = Annotated[Principal, Depends(require_kind(PrincipalKind.DEVICE))]
EnvName = Annotated[str, Path(pattern=ENV_NAME_PATTERN)]
_MAX_RECORD = limits.DEVICE_RECORD_MAX_SIZE
Since = Annotated[int, Query(ge=0, le=2**63 - 1, description="return records after this id")]
PageLimit = Annotated[int, Query(ge=1, le=limits.DEVICE_RECORDS_PAGE_MAX)]


# --- the device itself -----------------------------------------------------------------------


@router.get("/device", response_model=DeviceOut)
async def get_own(request: Request) -> DeviceOut:
    """The calling device's own record (device principal; one worker-thread call)."""
    return await device_call(request, OWN)


def _own(session: Session, principal: Principal, ctx: AppContext) -> DeviceOut:
    del ctx
    return DeviceOut.of(service.own_row(session, principal))


#: ``GET /v1/device``, also answered by :mod:`bastion.server.hotpath` (ADR 0043)
OWN = DeviceRoute(work=_own, attested=False, model=DeviceOut, shows_last_seen=True)


@router.patch("/device", response_model=DeviceOut)
def patch_own(
    body: DevicePatchIn, principal: DevicePrincipal, session: DbSession, ctx: Ctx
) -> DeviceOut:
    """Update the device's own os_version / agent_version / note."""
    changes = body.model_dump(exclude_unset=True)
    return DeviceOut.of(service.update_own(session, principal, changes, ctx.clock.now()))


@router.get("/device/config", response_model=DeviceConfigOut)
async def get_config(request: Request) -> DeviceConfigOut:
    """The fleet's config and env with this device's overrides (attestation-gated)."""
    return await device_call(request, CONFIG)


def _config(session: Session, principal: Principal, ctx: AppContext) -> DeviceConfigOut:
    del ctx
    return DeviceConfigOut(**service.effective_config(session, principal))


#: ``GET /v1/device/config``, also answered by :mod:`bastion.server.hotpath` (ADR 0043)
CONFIG = DeviceRoute(work=_config, attested=True, model=DeviceConfigOut)


@router.post("/device/logs", response_model=AcceptedOut)
def post_logs(
    body: LogsIn, principal: DevicePrincipal, session: DbSession, ctx: Ctx
) -> AcceptedOut:
    """Append log lines to the device's own log."""
    for line in body.lines:
        if service.record_size(line) > _MAX_RECORD:
            raise LimitError(
                f"log line is {service.record_size(line)} bytes, limit is {_MAX_RECORD}"
            )
    quota = service.RecordQuota.of(ctx.settings)
    n = service.append_records(session, principal, "log", body.lines, ctx.clock.now(), quota=quota)
    return AcceptedOut(accepted=n)


@router.post("/device/events", response_model=AcceptedOut)
def post_events(
    body: EventsIn, principal: DevicePrincipal, session: DbSession, ctx: Ctx
) -> AcceptedOut:
    """Append events to the device's own event stream."""
    bodies = [json.dumps(e.model_dump(), sort_keys=True) for e in body.events]
    for text in bodies:
        if service.record_size(text) > _MAX_RECORD:
            raise LimitError(
                f"event is {service.record_size(text)} bytes of JSON, limit is {_MAX_RECORD}"
            )
    quota = service.RecordQuota.of(ctx.settings)
    n = service.append_records(session, principal, "event", bodies, ctx.clock.now(), quota=quota)
    return AcceptedOut(accepted=n)


# --- operators -------------------------------------------------------------------------------


@router.get("/fleets/{fleet_id}/devices", response_model=list[DeviceOut])
def list_devices(access: FleetViewer, session: ReadSession) -> list[DeviceOut]:
    """Every device of the fleet."""
    from bastion.server.devices import repository

    return [DeviceOut.of(d) for d in repository.of_fleet(session, access.fleet_id)]


@router.get("/fleets/{fleet_id}/devices/{device_id}", response_model=DeviceDetailOut)
def show_device(device_id: str, access: FleetViewer, session: ReadSession) -> DeviceDetailOut:
    """One device with its certificate and overrides."""
    view = service.show(session, access.fleet_id, device_id)
    base = DeviceOut.of(view.device).model_dump()
    return DeviceDetailOut(
        **base, certificate=view.device.certificate, ek_sha256=view.device.ek_hash, env=view.env
    )


@router.get("/fleets/{fleet_id}/devices/{device_id}/logs", response_model=LogPageOut)
def device_logs(
    device_id: str,
    access: FleetViewer,
    session: ReadSession,
    since: Since = 0,
    limit: PageLimit = 100,
) -> LogPageOut:
    """A page of the device's log lines after ``since``, oldest first."""
    found = service.read_records(
        session, access.fleet_id, device_id, "log", since=since, limit=limit
    )
    records = [LogRecordOut(id=r.id, at=r.at, line=r.body) for r in found]
    return LogPageOut(records=records, next=found[-1].id if found else since)


@router.get("/fleets/{fleet_id}/devices/{device_id}/events", response_model=EventPageOut)
def device_events(
    device_id: str,
    access: FleetViewer,
    session: ReadSession,
    since: Since = 0,
    limit: PageLimit = 100,
) -> EventPageOut:
    """A page of the device's events after ``since``, oldest first."""
    found = service.read_records(
        session, access.fleet_id, device_id, "event", since=since, limit=limit
    )
    records = []
    for r in found:
        doc = json.loads(r.body)
        records.append(EventRecordOut(id=r.id, at=r.at, type=doc["type"], data=doc["data"]))
    return EventPageOut(records=records, next=found[-1].id if found else since)


@router.post("/fleets/{fleet_id}/devices/{device_id}/revoke", response_model=DeviceOut)
def revoke_device(device_id: str, access: FleetOperator, session: DbSession, ctx: Ctx) -> DeviceOut:
    """Revoke: the device is refused from its next request; its certificate joins the CRL."""
    device = service.revoke(
        session,
        fleet_id=access.fleet_id,
        org_id=access.org_id,
        device_id=device_id,
        actor=access.principal.actor,
        now=ctx.clock.now(),
    )
    out = DeviceOut.of(device)
    notify(ctx, device_id, "revoked")  # its open channel closes now, not at the next poll
    return out


@router.delete("/fleets/{fleet_id}/devices/{device_id}", status_code=204)
def delete_device(device_id: str, access: FleetAdmin, session: DbSession, ctx: Ctx) -> Response:
    """Delete the device; its certificate stays on the CRL."""
    service.delete_device(
        session,
        fleet_id=access.fleet_id,
        org_id=access.org_id,
        device_id=device_id,
        actor=access.principal.actor,
        now=ctx.clock.now(),
    )
    notify(ctx, device_id, "deleted")  # its open channel closes now, not at the next poll
    return Response(status_code=204)


@router.put("/fleets/{fleet_id}/devices/{device_id}/env/{name}", status_code=204)
def set_device_env(  # noqa: PLR0917 - FastAPI injects parameters by name
    device_id: str,
    name: EnvName,
    body: EnvValueIn,
    access: FleetOperator,
    session: DbSession,
    ctx: Ctx,
) -> Response:
    """Set a per-device environment override."""
    service.set_env(
        session,
        fleet_id=access.fleet_id,
        org_id=access.org_id,
        device_id=device_id,
        name=name,
        value=body.value,
        actor=access.principal.actor,
        now=ctx.clock.now(),
    )
    return Response(status_code=204)


@router.delete("/fleets/{fleet_id}/devices/{device_id}/env/{name}", status_code=204)
def delete_device_env(
    device_id: str, name: EnvName, access: FleetOperator, session: DbSession, ctx: Ctx
) -> Response:
    """Remove a per-device environment override."""
    service.delete_env(
        session,
        fleet_id=access.fleet_id,
        org_id=access.org_id,
        device_id=device_id,
        name=name,
        actor=access.principal.actor,
        now=ctx.clock.now(),
    )
    return Response(status_code=204)


# --- public PKI material -----------------------------------------------------------------------


@router.get(
    "/crl",
    response_class=Response,
    responses={200: {"content": {"application/pkix-crl": {}}}},
)
def get_crl(principal: CurrentPrincipal, session: ReadSession, ctx: Ctx) -> Response:
    """The device CA's current CRL (DER): every revoked or deleted device certificate.

    Public, but a bad credential is still refused (never falls back to anonymous)."""
    del principal
    der = service.crl_der(session, _device_ca(ctx), ctx.clock.now())
    return Response(content=der, media_type="application/pkix-crl")


@router.get(
    "/ca",
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {}}}},
)
def get_ca(principal: CurrentPrincipal, ctx: Ctx) -> Response:
    """The device CA certificate (PEM) that signs device certificates and the CRL."""
    del principal
    return Response(content=_device_ca(ctx).certificate_pem, media_type="application/x-pem-file")


def signed_only(authenticator: _A, what: str, *, on: bool) -> _A:
    """``authenticator``, or one refusing ``what`` when the server takes only signed device
    requests (``require_signed_device_requests``): checked before the credential is, so a
    refused request has no effect (no last_seen refresh)."""
    if not on:
        return authenticator

    def refuse(session: Session, credential: Any, now: dt.datetime) -> Principal:
        del session, credential, now
        raise AuthError(
            f"this server accepts only signed device requests (RFC 9421, made with the "
            f"device's TPM key; docs/agent.md): {what} is refused"
        )

    return cast(_A, refuse)


def _device_ca(ctx: AppContext) -> DeviceCa:
    if ctx.device_ca is None:
        raise ConfigError("this app has no device CA")
    return ctx.device_ca


def install(app: FastAPI) -> None:
    """Mount the routes; register the device API key and client-certificate authenticators."""
    from bastion.server.app import API_PREFIX

    registry = auth_registry(app)
    ctx = app_context(app)

    def seen(session: Session, principal: Principal, now: dt.datetime) -> Principal:
        return service.seen(ctx, session, principal, now)

    def by_api_key(session: Session, token: str, now: dt.datetime) -> Principal:
        return seen(session, service.authenticate_api_key(session, token, now), now)

    def by_certificate(session: Session, cert: x509.Certificate, now: dt.datetime) -> Principal:
        return seen(session, service.authenticate_certificate(session, cert, now), now)

    only = ctx.settings.require_signed_device_requests
    registry.add_token(DEVICE_KEY_PREFIX, signed_only(by_api_key, "a device API key", on=only))
    registry.set_certificate(
        signed_only(by_certificate, "a device client certificate (mTLS)", on=only)
    )
    _device_ca(ctx)  # fail at start, not at the first request
    app.include_router(router, prefix=API_PREFIX)
