"""The dashboard's browser security: the session cookie, CSRF tokens, origin checks, headers.

* **Session cookie** :data:`SESSION_COOKIE` holds the ``bst_ses_`` token that
  :func:`bastion.server.users.service.login` issued. :func:`cookie_principal` resolves it
  through the app's :class:`~bastion.server.auth.principal.AuthRegistry` exactly as a
  ``Bearer`` header and accepts only a *user session* (a personal API token, a device key
  or a provisioning key placed in the cookie is refused); the caller is rate-limited as
  on the API. The cookie is HttpOnly, SameSite=Strict, Path ``/ui`` and Secure unless
  the server listens on loopback over plain HTTP (:func:`cookie_secure`).
* **CSRF**: every form carries :func:`csrf_token` (``HMAC-SHA256(key=session token,
  CSRF_CONTEXT)``: a synchronizer token bound to the session, nothing to store) and
  :func:`check_csrf` compares it in constant time. The sign-in form, which has no
  session yet, uses a double-submit cookie :data:`LOGIN_CSRF_COOKIE`.
* **Origin**: :func:`check_origin` refuses a state-changing request whose ``Origin``
  is not the server's own or whose ``Sec-Fetch-Site`` says it came from another site.
* **Headers**: :data:`SECURITY_HEADERS` (a Content-Security-Policy without any script
  source, framing denied, no sniffing, no referrer to other origins, no caching).

Every refusal is an :class:`~bastion.errors.AuthError` naming expected vs actual.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from bastion import limits
from bastion.errors import AuthError, BastionError, SignInRequiredError
from bastion.io.http import is_loopback
from bastion.server.auth.principal import Principal, PrincipalKind, Via
from bastion.server.context import AppContext

SESSION_COOKIE = "bastion_session"
LOGIN_CSRF_COOKIE = "bastion_csrf"
OIDC_COOKIE = "bastion_ui_oidc"  # binds an OIDC sign-in to the browser that started it
COOKIE_PATH = "/ui"
CSRF_FIELD = "csrf"
CSRF_CONTEXT = b"bastion dashboard csrf v1"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send Origin: null
        "Cache-Control": "no-store",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
)

#: Sec-Fetch-Site values a state-changing dashboard request may carry
_SAME_SITE_FETCH = frozenset({"same-origin", "none"})


@dataclass(frozen=True, slots=True)
class PageUser:
    """A signed-in dashboard user: the principal, and the CSRF token of its session."""

    principal: Principal
    csrf: str


def csrf_token(session_token: str) -> str:
    """The synchronizer CSRF token of a dashboard session (hex HMAC-SHA256)."""
    return hmac.new(session_token.encode(), CSRF_CONTEXT, hashlib.sha256).hexdigest()


def check_csrf(expected: str, given: str | None, what: str = "form") -> None:
    """AuthError unless ``given`` equals ``expected`` (constant-time comparison)."""
    if not given:
        raise AuthError(f"{what} has no CSRF token: expected the token of this session")
    if len(given) > limits.TOKEN_MAX_LENGTH or not hmac.compare_digest(
        given.encode(), expected.encode()
    ):
        raise AuthError(f"{what} carries a CSRF token that does not belong to this session")


def new_login_csrf() -> str:
    """A random double-submit token for the sign-in form."""
    return secrets.token_urlsafe(32)


def own_origin(request: Request) -> str:
    """``scheme://host[:port]`` of this request as the browser addressed the server."""
    return f"{request.url.scheme}://{request.url.netloc}".lower()


def check_origin(request: Request) -> None:
    """AuthError when a state-changing request comes from another origin or site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.lower() not in _SAME_SITE_FETCH:
        raise AuthError(
            f"cross-site form refused: Sec-Fetch-Site is {site[:32]!r}, expected 'same-origin'"
        )
    origin = request.headers.get("origin")
    if origin is None:
        return  # same-origin navigations of older browsers; the CSRF token still decides
    parts = urlsplit(origin.strip().lower()) if origin.strip().lower() != "null" else None
    given = f"{parts.scheme}://{parts.netloc}" if parts and parts.scheme else "null"
    expected = own_origin(request)
    if given != expected:
        raise AuthError(
            f"form from another origin refused: Origin {given[:100]!r}, expected {expected!r}"
        )


def cookie_secure(ctx: AppContext, request: Request) -> bool:
    """Secure cookies unless the server listens on loopback over plain HTTP."""
    if request.url.scheme == "https" or ctx.settings.tls_cert is not None:
        return True
    return not is_loopback(ctx.settings.listen_host)


def cookie_principal(ctx: AppContext, request: Request) -> tuple[Principal, str]:
    """The user session in the cookie and its token; SignInRequiredError when there is none.

    The token goes through the registry's resolver (the same code as a Bearer header);
    anything but a live user *session* is refused.
    """
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequiredError("sign in to use the dashboard")
    if len(token) > limits.TOKEN_MAX_LENGTH:
        raise SignInRequiredError(
            f"session cookie is {len(token)} characters, limit {limits.TOKEN_MAX_LENGTH}"
        )
    address = request.client.host if request.client else "unknown"
    try:
        with ctx.db.session(write=False) as session:
            principal = ctx.auth.resolve(session, f"Bearer {token}", None, ctx.clock.now())
    except BastionError as exc:
        ctx.limiter.hit(f"addr:{address}")
        raise SignInRequiredError(
            f"the dashboard session is not valid ({exc}): sign in again"
        ) from exc
    if principal.kind is not PrincipalKind.USER or principal.via is not Via.SESSION:
        ctx.limiter.hit(f"addr:{address}")
        raise SignInRequiredError(
            f"the dashboard cookie must hold a user login session, not a {principal.via.value}"
        )
    principal = replace(principal, client=address)
    request.state.principal = principal
    ctx.limiter.hit(principal.rate_key)
    return principal, token


def set_session_cookie(
    response: Response, ctx: AppContext, request: Request, token: str, max_age: int
) -> None:
    """Put the session token in the HttpOnly, SameSite=Strict cookie."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        secure=cookie_secure(ctx, request),
        samesite="strict",
    )


def clear_session_cookie(response: Response, ctx: AppContext, request: Request) -> None:
    """Remove the session cookie (on sign-out or when it no longer resolves)."""
    response.delete_cookie(
        SESSION_COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        secure=cookie_secure(ctx, request),
        samesite="strict",
    )


def set_login_csrf_cookie(
    response: Response, ctx: AppContext, request: Request, value: str
) -> None:
    """The sign-in form's double-submit cookie."""
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        value,
        max_age=limits.UI_SIGNIN_FORM_TTL_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        secure=cookie_secure(ctx, request),
        samesite="strict",
    )


def apply_headers(response: Response) -> Response:
    """Add :data:`SECURITY_HEADERS` to a dashboard response."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response
