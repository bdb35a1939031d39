"""HTTP edge of releases (docs/server.md "Releases and rollouts").

========  ==============================================  ==========================
method    path                                            who
========  ==============================================  ==========================
POST      /v1/fleets/{fleet_id}/releases                  operator (bundle as body)
POST      /v1/fleets/{fleet_id}/releases/external         operator
GET       /v1/fleets/{fleet_id}/releases                  viewer
GET       /v1/fleets/{fleet_id}/releases/{release_id}     viewer
PUT       /v1/fleets/{fleet_id}/releases/{id}/golden      admin
GET       /v1/fleets/{fleet_id}/release-keyring           viewer
PUT       /v1/fleets/{fleet_id}/release-keyring           admin
GET       /v1/fleets/{fleet_id}/target-release            viewer
PUT       /v1/fleets/{fleet_id}/target-release            operator
GET       /v1/device/update/bundle/{release_id}           attested device (HTTP Range)
GET       /tuf/{path}                                     anyone (signed metadata)
========  ==============================================  ==========================

The upload route takes ``Content-Type: application/octet-stream`` and a body of up to
``settings.release_max_size`` bytes (the only route above ``max_body``). The TUF
repository folder (``settings.tuf_dir``) is served read-only; its metadata is signed,
so it is public like the CRL (a bad credential is still refused).
"""

from __future__ import annotations

import base64
import binascii
import re

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from bastion.errors import FormatError, NotFoundError
from bastion.server.attestation.gate import AttestedDevice
from bastion.server.auth.deps import (
    Ctx,
    CurrentPrincipal,
    DbSession,
    FleetAdmin,
    FleetOperator,
    FleetViewer,
    ReadSession,
)
from bastion.server.context import AppContext
from bastion.server.releases import repository, service
from bastion.server.releases.models import ReleaseSource
from bastion.server.releases.schemas import (
    ExternalReleaseIn,
    GoldenIn,
    KeyringIn,
    KeyringOut,
    ReleaseOut,
    TargetIn,
    TargetOut,
)
from bastion.server.releases.store import ReleaseStore, tuf_file

router = APIRouter(tags=["releases"])
tuf_router = APIRouter(tags=["releases"])
#: the upload route, for the body-size middleware (app.py)
UPLOAD_PATH = re.compile(r"/v1/fleets/[^/]+/releases")


def store_of(ctx: AppContext) -> ReleaseStore:
    return ReleaseStore(ctx.settings.resolved_release_store())


@router.post("/fleets/{fleet_id}/releases", response_model=ReleaseOut, status_code=201)
async def publish(
    request: Request, access: FleetOperator, session: DbSession, ctx: Ctx
) -> ReleaseOut:
    """Upload a bundle: verified against the fleet keyring, then kept in the file store."""
    mime = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mime != "application/octet-stream":
        raise FormatError(
            f"send the bundle as application/octet-stream, got {mime or 'no content type'!r}"
        )
    store = store_of(ctx)
    upload = await store.receive(request.stream(), ctx.settings.release_max_size)
    row = await run_in_threadpool(
        service.publish_bundle, session, access, store, upload, ctx.clock.now()
    )
    return ReleaseOut.of(row)


@router.post("/fleets/{fleet_id}/releases/external", response_model=ReleaseOut, status_code=201)
def register(
    body: ExternalReleaseIn, access: FleetOperator, session: DbSession, ctx: Ctx
) -> ReleaseOut:
    """Register a bundle at an external HTTP/CDN URL with its length and SHA-256."""
    ext = service.ExternalRelease(
        body.url, body.length, body.sha256, body.version, body.compatible, body.svn
    )
    return ReleaseOut.of(service.register_url(session, access, ext, ctx.clock.now()))


@router.get("/fleets/{fleet_id}/releases", response_model=list[ReleaseOut])
def list_releases(access: FleetViewer, session: ReadSession) -> list[ReleaseOut]:
    """The fleet's releases, newest first."""
    return [ReleaseOut.of(r) for r in service.list_releases(session, access.fleet_id)]


@router.get("/fleets/{fleet_id}/releases/{release_id}", response_model=ReleaseOut)
def show_release(release_id: str, access: FleetViewer, session: ReadSession) -> ReleaseOut:
    """One release."""
    return ReleaseOut.of(service.show(session, access.fleet_id, release_id))


@router.put("/fleets/{fleet_id}/releases/{release_id}/golden", response_model=ReleaseOut)
def put_golden(
    release_id: str, body: GoldenIn, access: FleetAdmin, session: DbSession, ctx: Ctx
) -> ReleaseOut:
    """Record the release's golden values (statement signed with the fleet's product key)."""
    try:
        raw = base64.b64decode(body.statement, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"statement is not base64: {exc}") from exc
    return ReleaseOut.of(service.set_golden(session, access, release_id, raw, ctx.clock.now()))


@router.get("/fleets/{fleet_id}/release-keyring", response_model=KeyringOut)
def get_keyring(access: FleetViewer, session: ReadSession) -> KeyringOut:
    """The certificates uploaded bundles must chain to."""
    row = service.keyring_of(session, access.fleet_id)
    return KeyringOut(keyring=row.keyring, updated_by=row.updated_by, updated_at=row.updated_at)


@router.put("/fleets/{fleet_id}/release-keyring", response_model=KeyringOut)
def put_keyring(body: KeyringIn, access: FleetAdmin, session: DbSession, ctx: Ctx) -> KeyringOut:
    """Replace the fleet's release keyring (PEM certificates)."""
    row = service.set_keyring(session, access, body.keyring, ctx.clock.now())
    return KeyringOut(keyring=row.keyring, updated_by=row.updated_by, updated_at=row.updated_at)


@router.get("/fleets/{fleet_id}/target-release", response_model=TargetOut)
def get_target(access: FleetViewer, session: ReadSession) -> TargetOut:
    """The release the fleet runs outside rollouts."""
    row = service.target_of(session, access.fleet_id)
    return TargetOut(release=ReleaseOut.of(row) if row else None)


@router.put("/fleets/{fleet_id}/target-release", response_model=TargetOut)
def put_target(body: TargetIn, access: FleetOperator, session: DbSession, ctx: Ctx) -> TargetOut:
    """Point the fleet at one of its releases (null: none)."""
    row = service.set_target(session, access, body.release_id, ctx.clock.now())
    return TargetOut(release=ReleaseOut.of(row) if row else None)


@router.get(
    "/device/update/bundle/{release_id}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def device_bundle(
    release_id: str, principal: AttestedDevice, session: ReadSession, ctx: Ctx
) -> FileResponse:
    """A stored bundle of the device's fleet (HTTP Range supported; attestation-gated)."""
    fleet = principal.fleet_id or ""
    row = repository.get(session, fleet, release_id)
    if row is None or row.source != ReleaseSource.STORE:
        raise NotFoundError(f"release {release_id!r} has no stored bundle in this fleet")
    path = store_of(ctx).existing(row.sha256)
    return FileResponse(path, media_type="application/octet-stream")


@tuf_router.get(
    "/tuf/{path:path}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def tuf(path: str, principal: CurrentPrincipal, ctx: Ctx) -> FileResponse:
    """A file of the TUF repository folder (read-only, plain names only)."""
    del principal
    found = tuf_file(ctx.settings.tuf_dir, path)
    media = "application/json" if found.suffix == ".json" else "application/octet-stream"
    return FileResponse(found, media_type=media)


def install(app: FastAPI) -> None:
    """Mount the routes (the API under /v1, the TUF folder at /tuf/)."""
    from bastion.server.app import API_PREFIX

    app.include_router(router, prefix=API_PREFIX)
    app.include_router(tuf_router)
