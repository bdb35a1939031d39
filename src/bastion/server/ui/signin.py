"""The dashboard's sign-in: password (+ TOTP or recovery code), OpenID Connect, sign-out.

======  ==========================  ==========================================
method  path (under ``/ui``)         who
======  ==========================  ==========================================
GET     /signin                      anyone (sets the form's double-submit cookie)
POST    /signin                      anyone: ``users.service.login``
GET     /oidc/login, /oidc/callback  anyone, when OIDC is configured
POST    /oidc/second-factor          the ticket holder (double-submit cookie)
POST    /signout                     session (revokes it)
======  ==========================  ==========================================

The sign-in forms have no session yet: their CSRF token is a double-submit cookie
(:data:`~bastion.server.ui.security.LOGIN_CSRF_COOKIE`), and the origin is checked.
OIDC runs the OIDC service's own flow (docs/dashboard.md "OpenID Connect").
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import RedirectResponse, Response

from bastion import limits
from bastion.errors import (
    AuthError,
    NotFoundError,
    RateLimitError,
)
from bastion.server.auth.deps import Ctx, DbSession, client_address
from bastion.server.context import AppContext
from bastion.server.oidc import service as oidc
from bastion.server.ui.pages import (
    Actor,
    Field,
    OptionalField,
    PageRoute,
    render,
    see_other,
)
from bastion.server.ui.security import (
    COOKIE_PATH,
    LOGIN_CSRF_COOKIE,
    OIDC_COOKIE,
    check_csrf,
    check_origin,
    clear_session_cookie,
    cookie_secure,
    new_login_csrf,
    set_login_csrf_cookie,
    set_session_cookie,
)
from bastion.server.users import service as users

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


# --- sign-in -------------------------------------------------------------------------------


def _signin_page(
    request: Request, ctx: Ctx, *, error: str | None = None, email: str = "", status: int = 200
) -> Response:
    token = new_login_csrf()
    response = render(
        request,
        "signin.html",
        {
            "form_csrf": token,
            "error": error,
            "email": email,
            "oidc": ctx.oidc is not None,
        },
        user=None,
        status=status,
    )
    set_login_csrf_cookie(response, ctx, request, token)
    return response


@router.get("/signin", name="ui.signin")
def signin_form(request: Request, ctx: Ctx) -> Response:
    """E-mail, password and (when enrolled) a TOTP or recovery code."""
    return _signin_page(request, ctx)


@router.post("/signin", name="ui.signin_submit")
def signin(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    ctx: Ctx,
    session: DbSession,
    email: Field,
    password: Annotated[str, Form(max_length=limits.PASSWORD_MAX_LENGTH)],
    totp: OptionalField = None,
    recovery_code: OptionalField = None,
    csrf: OptionalField = None,
) -> Response:
    """Check the sign-in form's double-submit token, then log in as the API does."""
    check_origin(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected:
        raise AuthError("the sign-in form has expired or cookies are off: reload the page")
    check_csrf(expected, csrf, "sign-in form")
    client = client_address(request)
    ctx.limiter.hit(f"addr:{client}")
    try:
        result = users.login(
            ctx,
            session,
            email,
            password,
            totp_code=(totp or "").strip() or None,
            recovery_code=(recovery_code or "").strip() or None,
            client=client,
        )
    except RateLimitError:
        raise
    except AuthError as exc:
        return _signin_page(request, ctx, error=str(exc), email=email, status=401)
    response = see_other(request, "ui.fleets")
    set_session_cookie(response, ctx, request, result.token, ctx.settings.session_ttl)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


def _signed_in(request: Request, ctx: Ctx, token: str) -> Response:
    """The answer that finishes an OIDC sign-in: the session cookie, then a same-site hop.

    The callback is reached by the provider's cross-site redirect; a redirect from here
    would still belong to that cross-site chain and the browser would withhold the new
    SameSite=Strict cookie, so the page moves on by itself (meta refresh, no script)."""
    response = render(request, "signed_in.html", {"next": "/ui/fleets"}, user=None)
    set_session_cookie(response, ctx, request, token, ctx.settings.session_ttl)
    response.delete_cookie(OIDC_COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax")
    return response


def _require_oidc(ctx: AppContext) -> None:
    if ctx.oidc is None:
        raise NotFoundError("OpenID Connect sign-in is not configured on this server")


@router.get("/oidc/login", name="ui.oidc_login")
def oidc_login(request: Request, ctx: Ctx, session: DbSession) -> Response:
    """Start an OIDC sign-in for the dashboard (the API's flow, a dashboard cookie)."""
    _require_oidc(ctx)
    client = client_address(request)
    ctx.limiter.hit(f"addr:{client}")
    started = oidc.begin(ctx, session, cli_port=None, client=client)
    response = RedirectResponse(started.authorization_url, status_code=302)
    response.set_cookie(
        OIDC_COOKIE,
        started.browser_binding,
        max_age=limits.OIDC_LOGIN_TTL_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        secure=cookie_secure(ctx, request),
        samesite="lax",  # the provider's top-level redirect back must carry it
    )
    return response


@router.get("/oidc/callback", name="ui.oidc_callback")
def oidc_callback(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    ctx: Ctx,
    session: DbSession,
    state: Annotated[str | None, Query(max_length=limits.OIDC_PARAM_MAX_LENGTH)] = None,
    code: Annotated[str | None, Query(max_length=limits.OIDC_PARAM_MAX_LENGTH)] = None,
    error: Annotated[str | None, Query(max_length=limits.OIDC_PARAM_MAX_LENGTH)] = None,
) -> Response:
    """Finish the sign-in (state, nonce, PKCE and the browser binding checked by the
    OIDC service): a session, or the second-factor form for a TOTP user."""
    _require_oidc(ctx)
    done = oidc.finish(
        ctx,
        session,
        state=state,
        code=code,
        error=error,
        browser_binding=request.cookies.get(OIDC_COOKIE),
        client=client_address(request),
    )
    if done.ticket is not None:
        token = new_login_csrf()
        response = render(
            request,
            "oidc_second_factor.html",
            {"ticket": done.ticket, "form_csrf": token, "error": None},
            user=None,
        )
        set_login_csrf_cookie(response, ctx, request, token)
        response.delete_cookie(OIDC_COOKIE, path=COOKIE_PATH, httponly=True, samesite="lax")
        return response
    assert done.token is not None
    return _signed_in(request, ctx, done.token)


@router.post("/oidc/second-factor", name="ui.oidc_second_factor")
def oidc_second_factor(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    ctx: Ctx,
    session: DbSession,
    ticket: Annotated[str, Form(max_length=limits.OIDC_PARAM_MAX_LENGTH)],
    totp: OptionalField = None,
    recovery_code: OptionalField = None,
    csrf: OptionalField = None,
) -> Response:
    """The TOTP (or recovery) code after an OIDC sign-in, with the form's CSRF token."""
    _require_oidc(ctx)
    check_origin(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected:
        raise AuthError("the second-factor form has expired or cookies are off: sign in again")
    check_csrf(expected, csrf, "second-factor form")
    done = oidc.second_factor(
        ctx,
        session,
        ticket=ticket,
        totp_code=(totp or "").strip() or None,
        recovery_code=(recovery_code or "").strip() or None,
        client=client_address(request),
    )
    assert done.token is not None
    response = see_other(request, "ui.fleets")
    set_session_cookie(response, ctx, request, done.token, ctx.settings.session_ttl)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


@router.post("/signout", name="ui.signout")
def signout(request: Request, user: Actor, ctx: Ctx, session: DbSession) -> Response:
    """End the session (revoked, as ``POST /v1/auth/logout``) and drop the cookie."""
    users.logout(ctx, session, user.principal)
    response = see_other(request, "ui.signin")
    clear_session_cookie(response, ctx, request)
    return response
