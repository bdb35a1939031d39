"""The dashboard's page machinery: templates, the page route class, and the signed-in user.

* :func:`render` renders a template of ``templates/`` inside the layout (navigation,
  the signed-in user, the CSRF token) as an HTML response with the security headers.
* :class:`PageRoute` is the route class of every dashboard router: errors become HTML
  pages with the status the API would give (:func:`bastion.server.errors.status_for`);
  a request without a usable session is sent to the sign-in page (303); every response
  gets :data:`~bastion.server.ui.security.SECURITY_HEADERS`.
* :data:`Viewer` (any page) and :data:`Actor` (any form POST) are the dependencies that
  resolve the cookie; :data:`Actor` then checks the origin and the CSRF token *before*
  the route's own code, and therefore before any service runs.

Templates are autoescaped Jinja2 with ``StrictUndefined`` (a missing value is an error,
not an empty string), and contain no script.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import Depends, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import NoMatchFound

from bastion import limits
from bastion.errors import AuthError, BastionError, SignInRequiredError
from bastion.server.auth.deps import get_ctx
from bastion.server.auth.rbac import OrgRole, Role
from bastion.server.errors import describe_validation, status_for
from bastion.server.ui import nav
from bastion.server.ui.security import (
    CSRF_FIELD,
    PageUser,
    apply_headers,
    check_csrf,
    check_origin,
    clear_session_cookie,
    cookie_principal,
    csrf_token,
)

log = logging.getLogger("bastion.server.ui")
TEMPLATES = Path(__file__).parent / "templates"
SIGNIN_PATH = "/ui/signin"


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@functools.cache
def environment() -> jinja2.Environment:
    """The template environment (autoescaping, strict undefined)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    return env


def _mounted(request: Request, name: str, params: Mapping[str, str]) -> bool:
    """Whether a route ``name`` taking ``params`` is mounted in the app.

    Asked through ``url_path_for`` (public, and it sees into included routers, which
    newer FastAPI keeps nested instead of copying into ``app.routes``)."""
    try:
        request.app.url_path_for(name, **params)
    except NoMatchFound:
        return False
    return True


def nav_links(
    request: Request,
    scope: nav.NavScope,
    *,
    params: Mapping[str, str] | None = None,
    role: Role | None = None,
    org_role: OrgRole | None = None,
) -> list[nav.NavLink]:
    """The links of one navigation scope for this caller."""
    here = request.scope.get("route")
    current = getattr(here, "name", None)
    given = dict(params or {})
    names = [e.route for e in nav.ENTRIES if e.scope is scope and _mounted(request, e.route, given)]
    links = []
    for entry in nav.visible(names, scope, role=role, org_role=org_role):
        url = request.app.url_path_for(entry.route, **given)
        links.append(nav.NavLink(entry.label, str(url), entry.route == current))
    return links


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    user: PageUser | None,
    status: int = 200,
) -> HTMLResponse:
    """Render ``template`` in the layout as an HTML response with the security headers."""

    def url(name: str, **params: Any) -> str:
        return str(request.app.url_path_for(name, **{k: str(v) for k, v in params.items()}))

    values = {
        "user": user,
        "csrf_field": CSRF_FIELD,
        "account_links": nav_links(request, nav.NavScope.ACCOUNT) if user else [],
        "url": url,
        "fleet_links": [],
        "org_links": [],
        **context,
    }
    html = environment().get_template(template).render(values)
    response = HTMLResponse(html, status_code=status)
    apply_headers(response)
    return response


def _error_page(request: Request, status: int, code: str, detail: str) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"status": status, "code": code, "detail": detail},
        user=None,
        status=status,
    )


class PageRoute(APIRoute):
    """Route class of the dashboard: HTML errors, sign-in redirects, security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await inner(request)
            except SignInRequiredError:
                response = RedirectResponse(SIGNIN_PATH, status_code=303)
                if request.cookies:
                    clear_session_cookie(response, get_ctx(request), request)
            except BastionError as exc:
                status, code, detail = status_for(exc, request)
                if status >= 500:
                    ref = secrets.token_hex(6)
                    log.error("page %s failed [%s]: %r", request.url.path, ref, exc)
                    detail = f"{detail} (ref {ref})"
                response = _error_page(request, status, code, detail)
            except RequestValidationError as exc:
                response = _error_page(request, 422, "invalid", describe_validation(exc.errors()))
            return apply_headers(response)

        return handler


def page_user(request: Request) -> PageUser:
    """The signed-in user of a page (SignInRequiredError sends the browser to sign in)."""
    principal, token = cookie_principal(get_ctx(request), request)
    return PageUser(principal, csrf_token(token))


def action_user(
    request: Request,
    csrf: Annotated[str | None, Form(max_length=limits.UI_FORM_FIELD_MAX_LENGTH)] = None,
) -> PageUser:
    """The signed-in user of a form POST: session, origin and CSRF token checked, in order.

    A POST without a usable session is a 401 (never a redirect: nothing is done); a
    signed-in caller's POST from another origin or without its CSRF token is a 403."""
    try:
        principal, token = cookie_principal(get_ctx(request), request)
    except SignInRequiredError as exc:
        raise AuthError(str(exc)) from exc
    check_origin(request)
    expected = csrf_token(token)
    check_csrf(expected, csrf)
    return PageUser(principal, expected)


#: a short text field of a dashboard form, and an optional one
Field = Annotated[str, Form(max_length=limits.UI_FORM_FIELD_MAX_LENGTH)]
OptionalField = Annotated[str | None, Form(max_length=limits.UI_FORM_FIELD_MAX_LENGTH)]
Viewer = Annotated[PageUser, Depends(page_user)]
Actor = Annotated[PageUser, Depends(action_user)]


def see_other(request: Request, name: str, **params: str) -> RedirectResponse:
    """303 to the named page (post/redirect/get)."""
    return RedirectResponse(str(request.app.url_path_for(name, **params)), status_code=303)
