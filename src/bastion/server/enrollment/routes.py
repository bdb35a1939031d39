"""HTTP edge of enrolment: ``POST /api/v1/enroll/begin`` and ``/enroll/finish``.

Only a provisioning-key principal reaches the service; users, devices and anonymous
callers are refused (401/403) by the dependency before any work.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, FastAPI

from bastion.errors import ConfigError, FormatError
from bastion.server.auth.deps import Ctx, DbSession, require_kind
from bastion.server.auth.principal import Principal, PrincipalKind
from bastion.server.enrollment.evidence import EnrollmentEvidence
from bastion.server.enrollment.schemas import (
    EnrollBeginIn,
    EnrollBeginOut,
    EnrollFinishIn,
    EnrollFinishOut,
)
from bastion.server.enrollment.service import EnrollmentService

router = APIRouter(tags=["enrolment"])
ProvisioningKeyPrincipal = Annotated[
    Principal, Depends(require_kind(PrincipalKind.PROVISIONING_KEY))
]


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what} is not base64: {exc}") from exc


def _csr_der(pem: str) -> bytes:
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError as exc:
        raise FormatError(f"csr is not a PEM PKCS#10 request: {exc}") from exc
    return csr.public_bytes(serialization.Encoding.DER)


def enrollment_service(ctx: Ctx) -> EnrollmentService:
    """The app's enrolment service (device CA + per-key rate limiter), from its context."""
    if ctx.enrollment is None:
        raise ConfigError("this app has no enrolment service")
    return ctx.enrollment


Service = Annotated[EnrollmentService, Depends(enrollment_service)]


@router.post("/enroll/begin", response_model=EnrollBeginOut)
def begin(
    body: EnrollBeginIn,
    principal: ProvisioningKeyPrincipal,
    session: DbSession,
    ctx: Ctx,
    service: Service,
) -> EnrollBeginOut:
    """Check the provisioning key and the TPM evidence; answer a credential challenge."""
    evidence = EnrollmentEvidence(
        serial=body.serial,
        ek_public=_unb64(body.ek_public, "ek_public"),
        ak_public=_unb64(body.ak_public, "ak_public"),
        key_public=_unb64(body.key_public, "key_public"),
        csr_der=_csr_der(body.csr),
        certify_attest=_unb64(body.certify_attest, "certify_attest"),
        certify_signature=_unb64(body.certify_signature, "certify_signature"),
        ek_certificate=(
            _unb64(body.ek_certificate, "ek_certificate") if body.ek_certificate else None
        ),
    )
    out = service.begin(
        session,
        key_id=principal.id,
        actor=principal.actor,
        ev=evidence,
        now=ctx.clock.now(),
        fleet_id=body.fleet_id,
    )
    return EnrollBeginOut(
        challenge_id=out.challenge_id,
        credential_blob=base64.b64encode(out.credential_blob).decode(),
        encrypted_secret=base64.b64encode(out.encrypted_secret).decode(),
        expires_at=out.expires_at,
    )


@router.post("/enroll/finish", response_model=EnrollFinishOut)
def finish(
    body: EnrollFinishIn,
    principal: ProvisioningKeyPrincipal,
    session: DbSession,
    ctx: Ctx,
    service: Service,
) -> EnrollFinishOut:
    """Check the activation proof; issue the certificate and the sealed device API key."""
    out = service.finish(
        session,
        key_id=principal.id,
        actor=principal.actor,
        challenge_id=body.challenge_id,
        proof=_unb64(body.proof, "proof"),
        now=ctx.clock.now(),
    )
    return EnrollFinishOut(
        device_id=out.device_id,
        fleet_id=out.fleet_id,
        certificate=out.certificate_pem,
        ca_certificate=out.ca_certificate_pem,
        sealed_api_key=base64.b64encode(out.sealed_api_key).decode(),
    )


def install(app: FastAPI) -> None:
    """Mount the routes (the service is built by ``create_app``, in the app context)."""
    from bastion.server.app import API_PREFIX

    app.include_router(router, prefix=API_PREFIX)


__all__ = ["install", "router"]
