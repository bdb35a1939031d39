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

:func:`device_work` is that one call's body; the heartbeat routes' second request path
(:mod:`bastion.server.hotpath`, ADR 0043) calls the same function with the same
:class:`DeviceRoute`, so both paths authenticate, limit, gate and read alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bastion.server.attestation import repository, service
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
from bastion.server.devices import service as devices

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)
#: a device route's work: (its read session, the device principal, the app context)
DeviceWork = Callable[[Session, Principal, AppContext], _T]


@dataclass(frozen=True, slots=True)
class DeviceRoute(Generic[_M]):
    """One heartbeat route: its work, whether it is gated, the model it answers with
    (the route's ``response_model``), and whether that shows the device's
    ``last_seen_at`` (the answer cache drops such answers when it is written)."""

    work: Callable[[Session, Principal, AppContext], _M]
    attested: bool
    model: type[_M]
    shows_last_seen: bool = False


def require_attested_device(
    principal: Annotated[Principal, Depends(require_kind(PrincipalKind.DEVICE))],
    session: ReadSession,
    ctx: Ctx,
) -> Principal:
    """The device principal, if it passes the gate (else 403 ``attestation_required``)."""
    service.require_attested(session, principal, ctx.clock.now())
    return principal


AttestedDevice = Annotated[Principal, Depends(require_attested_device)]


@dataclass(frozen=True, slots=True)
class Answered:
    """Whose a device route's answer is and until when it holds, as the device answer
    cache keeps it (docs/adr/0044-device-answer-cache.md)."""

    device_id: str
    rate_key: str
    #: the end of the gate's pass (gated routes; None: the gate sets no end)
    until: dt.datetime | None
    #: the device's ``last_seen_at`` after this request (None: the answer must not be
    #: kept, for the cache could not tell when the next presence write is due)
    seen_at: dt.datetime | None


def device_work(request: Request, route: DeviceRoute[_M]) -> _M:
    """The route's work for the calling device (blocking; call it in a worker thread):
    authentication and rate limit, a device principal (else 401/403), the attestation
    gate when the route is gated (else 403 ``attestation_required``), then the work, all
    through one read session."""
    return device_answer(request, route)[0]


def device_answer(
    request: Request, route: DeviceRoute[_M], signed: Principal | None = None
) -> tuple[_M, Answered]:
    """:func:`device_work`, and what the answer cache needs to keep its answer.

    ``signed``: the device whose request signature and nonce the hot path checked (ADR
    0048); it is authenticated in this session and rate-limited here instead of
    resolving the request's credentials."""
    ctx = get_ctx(request)
    with ctx.db.session(write=False, autocommit=True) as session:
        if route.attested:  # a device key's authentication reads the gate's inputs too
            repository.prefetch_gate(session)
        if signed is None:
            principal = check_kind(resolve_principal(request, session), PrincipalKind.DEVICE)
        else:
            principal = devices.signed_in(ctx, session, signed, ctx.clock.now())
            request.state.principal = principal
            ctx.limiter.hit(principal.rate_key)
        until = None
        if route.attested:
            until = service.require_attested(session, principal, ctx.clock.now())
        seen_at = devices.last_seen(session, principal)
        answer = route.work(session, principal, ctx)
        return answer, Answered(principal.id, principal.rate_key, until, seen_at)


async def device_call(request: Request, route: DeviceRoute[_M]) -> _M:
    """:func:`device_work` in one worker-thread call (the FastAPI endpoints' body)."""
    return await run_in_threadpool(device_work, request, route)
