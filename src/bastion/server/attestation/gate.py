"""The attestation gate for device routes, and the device routes' one worker-thread call.

``AttestedDevice`` is a device principal whose newest verdict passed within the fleet's
interval (:func:`bastion.server.attestation.service.require_attested`); routes that hand
out configuration, environment, target release or secrets use it instead of the plain
device principal. Attest, report and log routes keep the plain one.

:func:`device_call` is the same chain for the heartbeat routes a device calls all the
time (``GET /v1/device``, ``/v1/device/config``, ``/v1/device/target-release``): the
route is ``async`` and hands one function to a worker thread, which opens one read
session, resolves and rate-limits the caller (:func:`~bastion.server.auth.deps.resolve_principal`),
requires a device, applies the gate when asked, and does the route's reads. The
dependency chain instead costs one worker-thread hand-off per sync dependency (five
on a gated route), which was the largest single cost of such a request
(docs/server.md "Device API speed"). The checks and their order are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bastion.server.attestation import service
from bastion.server.auth.deps import (
    Ctx,
    ReadSession,
    check_kind,
    get_ctx,
    require_kind,
    resolve_principal,
)
from bastion.server.auth.principal import Principal, PrincipalKind
from bastion.server.context import AppContext

_T = TypeVar("_T")
#: a device route's work: (its read session, the device principal, the app context)
DeviceWork = Callable[[Session, Principal, AppContext], _T]


def require_attested_device(
    principal: Annotated[Principal, Depends(require_kind(PrincipalKind.DEVICE))],
    session: ReadSession,
    ctx: Ctx,
) -> Principal:
    """The device principal, if it passes the gate (else 403 ``attestation_required``)."""
    service.require_attested(session, principal, ctx.clock.now())
    return principal


AttestedDevice = Annotated[Principal, Depends(require_attested_device)]


async def device_call(request: Request, work: DeviceWork[_T], *, attested: bool) -> _T:
    """Run ``work`` for the calling device in one worker-thread call: authentication and
    rate limit, a device principal (else 401/403), the attestation gate when
    ``attested`` (else 403 ``attestation_required``), then the work, all through one
    read session."""
    ctx = get_ctx(request)

    def run() -> _T:
        with ctx.db.session(write=False) as session:
            principal = check_kind(resolve_principal(request, session), PrincipalKind.DEVICE)
            if attested:
                service.require_attested(session, principal, ctx.clock.now())
            return work(session, principal, ctx)

    return await run_in_threadpool(run)
