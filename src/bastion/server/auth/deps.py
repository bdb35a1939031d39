"""FastAPI dependencies: context, database sessions, the caller, and role checks.

Use them through the ``Annotated`` aliases::

    @router.get("/fleets/{fleet_id}/things")
    def list_things(access: FleetViewer, session: ReadSession) -> ...: ...

    @router.post("/device/logs")
    def write_logs(principal: CurrentPrincipal, session: DbSession) -> ...:
        if principal.kind is not PrincipalKind.DEVICE: raise AuthError(...)

* :data:`DbSession` a write session (services commit); :data:`ReadSession` read-only.
* :data:`CurrentPrincipal` whoever called (possibly anonymous), already rate-limited.
* :data:`CurrentUser` a user (session or PAT); :data:`SessionUser` a user logged in with
  a session (not a PAT: for token management and 2FA enrolment).
* :data:`FleetViewer`/:data:`FleetOperator`/:data:`FleetAdmin`/:data:`FleetOwner` a
  :class:`~bastion.server.auth.rbac.FleetAccess` for the ``{fleet_id}`` path parameter.
* :func:`fleet_role` builds the same for any minimum role.
* :data:`OrgMemberAccess`/:data:`OrgOwnerAccess` an
  :class:`~bastion.server.auth.rbac.OrgAccess` for the ``{org_id}`` path parameter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Annotated, Any

from cryptography import x509
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from bastion.errors import AuthError
from bastion.server.auth.principal import Principal, PrincipalKind, SignedMessage, Via
from bastion.server.auth.rbac import (
    FleetAccess,
    OrgAccess,
    OrgRole,
    Role,
    fleet_access,
    org_access,
    require_user_principal,
)
from bastion.server.context import AppContext, app_context


def get_ctx(request: Request) -> AppContext:
    """The app's shared context."""
    return app_context(request.app)


async def _ctx_dependency(request: Request) -> AppContext:
    # async: FastAPI runs it on the event loop, not in a worker thread (no I/O here)
    return app_context(request.app)


def db_session(request: Request) -> Iterator[Session]:
    """A write session for one request (rolled back unless the service committed)."""
    with get_ctx(request).db.session(write=True) as session:
        yield session


def read_session(request: Request) -> Iterator[Session]:
    """A read-only session for one request."""
    with get_ctx(request).db.session(write=False) as session:
        yield session


def peer_certificate(request: Request) -> x509.Certificate | None:
    """The verified TLS client certificate, from the ASGI ``tls`` extension, if any."""
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    if not chain:
        return None
    try:
        return x509.load_pem_x509_certificate(str(chain[0]).encode())
    except ValueError as exc:
        raise AuthError("client certificate could not be parsed") from exc


def signed_message(request: Request) -> SignedMessage | None:
    """The request as a signature authenticator sees it, when it carries a signature."""
    return signed_message_of(request.scope)


def signed_message_of(scope: Mapping[str, Any]) -> SignedMessage | None:
    """:func:`signed_message` from an ASGI scope (HTTP or WebSocket: the upgrade is a GET)."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = bytes(name).decode("latin-1").lower()
        text = bytes(value).decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if "signature-input" not in headers:
        return None
    raw = scope.get("raw_path")
    path = bytes(raw).decode("latin-1") if raw else str(scope.get("path", "/"))
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    target = path + (f"?{query}" if query else "")
    return SignedMessage(str(scope.get("method") or "GET"), target, headers)


def client_address(request: Request) -> str:
    """The peer address (no proxy headers are trusted)."""
    return request.client.host if request.client else "unknown"


def current_principal(
    request: Request, session: Annotated[Session, Depends(read_session)]
) -> Principal:
    """Resolve and rate-limit the caller; stores it on ``request.state.principal``.

    It reads through the request's read session (the one :data:`ReadSession` gives the
    route too), so a read route's authentication and work share one connection."""
    return resolve_principal(request, session)


def resolve_principal(request: Request, session: Session) -> Principal:
    """:func:`current_principal` through ``session``, for code that holds a session
    already (the device routes' one worker-thread call, :mod:`..attestation.gate`)."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    ctx = get_ctx(request)
    address = client_address(request)
    principal = ctx.auth.resolve(
        session,
        request.headers.get("authorization"),
        peer_certificate(request),
        ctx.clock.now(),
        signed_message(request),
    )
    if not principal.client:
        principal = _with_client(principal, address)
    request.state.principal = principal
    ctx.limiter.hit(principal.rate_key)
    return principal


def _with_client(principal: Principal, address: str) -> Principal:
    from dataclasses import replace

    return replace(principal, client=address)


def require_user(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """A user principal (401 anonymous, 403 device or provisioning key)."""
    require_user_principal(principal)
    return principal


def require_session_user(principal: Annotated[Principal, Depends(require_user)]) -> Principal:
    """A user logged in with a session token; personal API tokens are refused."""
    if principal.via is not Via.SESSION:
        raise AuthError("this route needs a login session, not a personal API token")
    return principal


def require_kind(kind: PrincipalKind) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency accepting only principals of ``kind``."""

    async def dependency(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Principal:
        return check_kind(principal, kind)

    return dependency


def check_kind(principal: Principal, kind: PrincipalKind) -> Principal:
    """``principal`` if it is of ``kind``, else AuthError (403 if authenticated, else 401)."""
    if principal.kind is not kind:
        if principal.authenticated:
            raise AuthError(f"only a {kind.value} may use this route")
        raise AuthError("authentication required")
    return principal


def fleet_role(minimum: Role) -> Callable[..., FleetAccess]:
    """A dependency giving the caller's FleetAccess for path parameter ``fleet_id``."""

    def dependency(
        fleet_id: str,
        principal: Annotated[Principal, Depends(current_principal)],
        session: Annotated[Session, Depends(read_session)],
    ) -> FleetAccess:
        return fleet_access(session, principal, fleet_id, minimum)

    return dependency


def org_role(minimum: OrgRole) -> Callable[..., OrgAccess]:
    """A dependency giving the caller's OrgAccess for path parameter ``org_id``."""

    def dependency(
        org_id: str,
        principal: Annotated[Principal, Depends(current_principal)],
        session: Annotated[Session, Depends(read_session)],
    ) -> OrgAccess:
        return org_access(session, principal, org_id, minimum)

    return dependency


DbSession = Annotated[Session, Depends(db_session)]
ReadSession = Annotated[Session, Depends(read_session)]
Ctx = Annotated[AppContext, Depends(_ctx_dependency)]
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
CurrentUser = Annotated[Principal, Depends(require_user)]
SessionUser = Annotated[Principal, Depends(require_session_user)]
FleetViewer = Annotated[FleetAccess, Depends(fleet_role(Role.VIEWER))]
FleetOperator = Annotated[FleetAccess, Depends(fleet_role(Role.OPERATOR))]
FleetAdmin = Annotated[FleetAccess, Depends(fleet_role(Role.ADMIN))]
FleetOwner = Annotated[FleetAccess, Depends(fleet_role(Role.OWNER))]
OrgMemberAccess = Annotated[OrgAccess, Depends(org_role(OrgRole.MEMBER))]
OrgOwnerAccess = Annotated[OrgAccess, Depends(org_role(OrgRole.OWNER))]
