"""OIDC sign-in routes (docs/server.md "OpenID Connect").

=======  ==============================  ==========================================
method   path                            who
=======  ==============================  ==========================================
GET      /v1/auth/oidc/login             anyone (rate-limited): 302 to the provider
GET      /v1/auth/oidc/callback          the browser or CLI that started the sign-in
POST     /v1/auth/oidc/second-factor     whoever holds the ticket (TOTP users)
=======  ==============================  ==========================================

The login answer sets the HttpOnly browser-binding cookie :data:`COOKIE` (path
``/v1/auth/oidc``, ``SameSite=Lax`` so the provider's top-level redirect carries it,
``Secure`` over https); the callback needs it back and clears it. Without OIDC
configured every route answers 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse

from bastion import limits
from bastion.server.auth.deps import Ctx, CurrentPrincipal, DbSession, client_address
from bastion.server.oidc import schemas, service
from bastion.server.users import schemas as user_schemas

router = APIRouter(prefix="/v1/auth/oidc", tags=["users"])
COOKIE = "bastion_oidc"
COOKIE_PATH = "/v1/auth/oidc"
MAX_PARAM = limits.OIDC_PARAM_MAX_LENGTH


@router.get("/login", status_code=302, response_class=RedirectResponse)
def oidc_login(
    request: Request,
    *,
    ctx: Ctx,
    session: DbSession,
    _p: CurrentPrincipal,
    cli_port: Annotated[int | None, Query(ge=1024, le=65535)] = None,
) -> RedirectResponse:
    """Start an OIDC sign-in: redirect to the provider (``cli_port``: the CLI's listener)."""
    started = service.begin(ctx, session, cli_port=cli_port, client=client_address(request))
    response = RedirectResponse(started.authorization_url, status_code=302)
    response.set_cookie(
        COOKIE,
        started.browser_binding,
        max_age=limits.OIDC_LOGIN_TTL_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="lax",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/callback")
def oidc_callback(
    request: Request,
    *,
    ctx: Ctx,
    session: DbSession,
    _p: CurrentPrincipal,
    state: Annotated[str | None, Query(max_length=MAX_PARAM)] = None,
    code: Annotated[str | None, Query(max_length=MAX_PARAM)] = None,
    error: Annotated[str | None, Query(max_length=MAX_PARAM)] = None,
) -> JSONResponse:
    """Finish the sign-in: a session, or a ticket when the account has TOTP."""
    done = service.finish(
        ctx,
        session,
        state=state,
        code=code,
        error=error,
        browser_binding=request.cookies.get(COOKIE),
        client=client_address(request),
    )
    body = schemas.OidcCallbackOut(
        token=done.token,
        expires_at=done.expires_at,
        two_factor=done.two_factor,
        second_factor_required=done.ticket is not None,
        ticket=done.ticket,
        ticket_expires_at=done.ticket_expires_at,
    )
    response = JSONResponse(body.model_dump(mode="json"), headers={"Cache-Control": "no-store"})
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


@router.post("/second-factor")
def oidc_second_factor(
    body: schemas.OidcSecondFactorIn,
    request: Request,
    ctx: Ctx,
    session: DbSession,
    _p: CurrentPrincipal,
) -> user_schemas.LoginOut:
    """Exchange the ticket and a TOTP (or recovery) code for a session."""
    done = service.second_factor(
        ctx,
        session,
        ticket=body.ticket,
        totp_code=body.totp,
        recovery_code=body.recovery_code,
        client=client_address(request),
    )
    assert done.token is not None and done.expires_at is not None
    return user_schemas.LoginOut(
        token=done.token, expires_at=done.expires_at, two_factor=done.two_factor
    )


def install(app: FastAPI) -> None:
    app.include_router(router)
