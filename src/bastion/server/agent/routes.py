"""HTTP edge of the device agent (docs/agent.md).

=======  ================================================  ===========
method   path                                              who
=======  ================================================  ===========
POST     /v1/device/heartbeat                              the device
POST     /v1/device/identity/rotate                        the device
GET      /v1/device/certificate                            the device
GET      /v1/fleets/{fleet_id}/devices/{device_id}/presence  viewer
=======  ================================================  ===========

``install`` also registers the RFC 9421 signature authenticator (ADR 0032) and the
middleware that checks ``Content-Digest`` against the body.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Annotated

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy.orm import Session

from bastion.errors import ConfigError, FormatError, NotFoundError
from bastion.server.agent import rotation, service
from bastion.server.agent.models import DevicePresence
from bastion.server.agent.schemas import (
    CertificateOut,
    HeartbeatIn,
    HeartbeatOut,
    PresenceOut,
    RotateIn,
)
from bastion.server.attestation.gate import AttestedDevice
from bastion.server.auth.deps import Ctx, DbSession, FleetViewer, ReadSession, require_kind
from bastion.server.auth.principal import Principal, PrincipalKind, SignedMessage
from bastion.server.context import AppContext, app_context
from bastion.server.devices import repository as devices_repo
from bastion.server.devices.ca import DeviceCa

router = APIRouter(tags=["agent"])
DevicePrincipal = Annotated[Principal, Depends(require_kind(PrincipalKind.DEVICE))]


@router.post("/device/heartbeat", response_model=HeartbeatOut)
def heartbeat(
    body: HeartbeatIn, principal: DevicePrincipal, session: DbSession, ctx: Ctx
) -> HeartbeatOut:
    """Record the agent's version, slot, uptime and log backlog; the pending command count."""
    now = ctx.clock.now()
    service.heartbeat(session, principal, body.model_dump(exclude_unset=True), now)
    return HeartbeatOut(
        server_time=now, pending_commands=service.pending_count(session, principal.id, now)
    )


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what} is not base64: {exc}") from exc


def _ca(ctx: AppContext) -> DeviceCa:
    if ctx.device_ca is None:
        raise ConfigError("this app has no device CA")
    return ctx.device_ca


@router.post("/device/identity/rotate", response_model=CertificateOut)
def rotate_identity(
    body: RotateIn, principal: AttestedDevice, session: DbSession, ctx: Ctx
) -> CertificateOut:
    """Switch to a new TPM key certified by the enrolled AK (attestation-gated: it hands
    out a credential); the new certificate."""
    try:
        csr_der = x509.load_pem_x509_csr(body.csr.encode()).public_bytes(serialization.Encoding.DER)
    except ValueError as exc:
        raise FormatError(f"csr is not a PEM certificate request: {exc}") from exc
    ca = _ca(ctx)
    device = rotation.rotate(
        session,
        principal,
        ca,
        _unb64(body.key_public, "key_public"),
        csr_der,
        _unb64(body.certify_attest, "certify_attest"),
        _unb64(body.certify_signature, "certify_signature"),
        ctx.clock.now(),
    )
    return CertificateOut(certificate=device.certificate, ca_certificate=ca.certificate_pem)


@router.get("/device/certificate", response_model=CertificateOut)
def own_certificate(principal: DevicePrincipal, session: ReadSession, ctx: Ctx) -> CertificateOut:
    """The calling device's current certificate (an agent recovering a rotation)."""
    from bastion.server.devices import service as devices

    device = devices.own(session, principal)
    return CertificateOut(
        certificate=rotation.certificate_pem(device), ca_certificate=_ca(ctx).certificate_pem
    )


@router.get("/fleets/{fleet_id}/devices/{device_id}/presence", response_model=PresenceOut)
def get_presence(device_id: str, access: FleetViewer, session: ReadSession) -> PresenceOut:
    """Whether the device's channel is open and what its last heartbeat said."""
    device = devices_repo.get(session, device_id)
    if device is None or device.fleet_id != access.fleet_id:
        raise NotFoundError(f"device {device_id} not found in this fleet")
    return PresenceOut.of(session.get(DevicePresence, device_id), device_id)


def install(app: FastAPI) -> None:
    """Mount the routes; register the signature authenticator and the digest check."""
    from bastion.server.app import API_PREFIX

    ctx = app_context(app)

    def by_signature(session: Session, signed: SignedMessage, now: dt.datetime) -> Principal:
        principal, nonce = service.authenticate_signature(session, signed, now)
        # hand the read connection back before taking a write one: a thread holding one
        # while waiting for the other starves the pool when many devices connect at once
        # (bench/agents.py saw 30 s pool timeouts); nothing read here is used afterwards
        session.rollback()
        with ctx.db.session(write=True) as write:
            service.remember_nonce(write, principal, nonce, now)
        return principal

    ctx.auth.set_signature(by_signature)
    app.add_middleware(service.ContentDigestMiddleware, max_body=ctx.settings.max_body)
    app.include_router(router, prefix=API_PREFIX)
