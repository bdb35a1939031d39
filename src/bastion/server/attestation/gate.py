"""The attestation gate as a FastAPI dependency for device routes.

``AttestedDevice`` is a device principal whose newest verdict passed within the fleet's
interval (:func:`bastion.server.attestation.service.require_attested`); routes that hand
out configuration, environment, target release or secrets use it instead of the plain
device principal. Attest, report and log routes keep the plain one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from bastion.server.attestation import service
from bastion.server.auth.deps import Ctx, ReadSession, require_kind
from bastion.server.auth.principal import Principal, PrincipalKind


def require_attested_device(
    principal: Annotated[Principal, Depends(require_kind(PrincipalKind.DEVICE))],
    session: ReadSession,
    ctx: Ctx,
) -> Principal:
    """The device principal, if it passes the gate (else 403 ``attestation_required``)."""
    service.require_attested(session, principal, ctx.clock.now())
    return principal


AttestedDevice = Annotated[Principal, Depends(require_attested_device)]
