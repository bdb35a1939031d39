"""The dashboard's account page and its forms: re-authentication, password, TOTP, tokens,
invitations.

======  ============================================  ==============================
method  path (under ``/ui``)                           who (as on the API)
======  ============================================  ==============================
GET     /account                                       session
POST    /account/reauth                                session
POST    /account/totp                                  session (fresh)
POST    /account/totp/confirm                          session
POST    /account/totp/disable                          session (fresh) + a current code
POST    /account/password                              session (fresh) + the current one
POST    /account/tokens                                session (fresh for write scopes)
POST    /account/sessions/{session_id}/revoke          session (fresh unless the calling one)
POST    /account/sessions/revoke-others                session (fresh)
POST    /account/tokens/{token_id}/revoke              session
POST    /account/invitations/{invitation_id}/accept    session (the invitee)
POST    /account/invitations/{invitation_id}/decline   session (the invitee)
======  ============================================  ==============================

Each form calls the service function of its API route, which checks what the route
checks (a fresh session for a password change and for turning TOTP off, as
``POST /v1/me/password`` and ``POST /v1/me/totp/disable`` demand).

Secrets (a new token, a TOTP seed being enrolled, recovery codes) are shown on the
answer to the form that made them and never again (pages are ``no-store``).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from bastion import limits
from bastion.errors import FormatError
from bastion.server.auth.deps import Ctx, DbSession, ReadSession, client_address
from bastion.server.auth.rbac import (
    SCOPES,
)
from bastion.server.auth.reauth import WRITE_SCOPES, is_fresh, require_fresh
from bastion.server.context import AppContext
from bastion.server.orgs import invitations
from bastion.server.ui.pages import (
    Actor,
    OptionalField,
    PageRoute,
    Viewer,
    render,
    see_other,
)
from bastion.server.ui.security import (
    PageUser,
)
from bastion.server.users import lifecycle
from bastion.server.users import service as users

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)


# --- the account: 2FA, sessions, tokens, invitations ----------------------------------------


def _account(
    request: Request,
    user: PageUser,
    session: Session,
    ctx: AppContext,
    *,
    shown: Mapping[str, Any] | None = None,
    status: int = 200,
) -> Response:
    """The account page; ``shown`` carries what is displayed once (a new token's secret,
    a TOTP secret being enrolled, recovery codes)."""
    values: dict[str, Any] = {
        "me": users.get_me(session, user.principal),
        "sessions": lifecycle.list_sessions(ctx, session, user.principal),
        "tokens": users.list_pats(session, user.principal),
        "invitations": invitations.my_invitations(ctx, session, user.principal),
        "current_token": user.principal.token_id,
        "fresh": is_fresh(
            user.principal,
            ctx.clock.now(),
            totp_enabled=users.get_me(session, user.principal).totp_enabled,
        ),
        "scopes": SCOPES,
        "new_token": None,
        "totp_enrolment": None,
        "recovery_codes": None,
        "notice": None,
    }
    values.update(shown or {})
    return render(request, "account.html", values, user=user, status=status)


@router.get("/account", name="ui.account")
def account_page(request: Request, user: Viewer, session: ReadSession, ctx: Ctx) -> Response:
    """The caller: 2FA, login sessions, personal API tokens, invitations."""
    return _account(request, user, session, ctx)


@router.post("/account/reauth", name="ui.reauth")
def reauth(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    password: Annotated[str, Form(max_length=limits.PASSWORD_MAX_LENGTH)],
    totp: OptionalField = None,
    recovery_code: OptionalField = None,
) -> Response:
    """Give the password (and second factor) again, as ``POST /v1/auth/reauth``."""
    lifecycle.reauthenticate(
        ctx,
        session,
        user.principal,
        password,
        totp_code=(totp or "").strip() or None,
        recovery_code=(recovery_code or "").strip() or None,
        client=client_address(request),
    )
    return see_other(request, "ui.account")


@router.post("/account/totp", name="ui.totp_begin")
def totp_begin(request: Request, user: Actor, session: DbSession, ctx: Ctx) -> Response:
    """Start TOTP enrolment (fresh session, as ``POST /v1/me/totp``): show the secret."""
    require_fresh(ctx, session, user.principal)
    secret, uri = users.totp_begin(ctx, session, user.principal)
    return _account(request, user, session, ctx, shown={"totp_enrolment": (secret, uri)})


@router.post("/account/totp/confirm", name="ui.totp_confirm")
def totp_confirm(
    request: Request,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    code: Annotated[str, Form(pattern=r"^[0-9]{6}$")],
) -> Response:
    """Finish enrolment with a first code (as ``POST /v1/me/totp/confirm``): show the
    recovery codes once."""
    codes = users.totp_confirm(ctx, session, user.principal, code)
    return _account(request, user, session, ctx, shown={"recovery_codes": codes})


@router.post("/account/totp/disable", name="ui.totp_disable")
def totp_disable(
    request: Request,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    code: Annotated[str, Form(pattern=r"^[0-9]{6}$")],
) -> Response:
    """Turn TOTP off (fresh session and a current code, as ``POST /v1/me/totp/disable``)."""
    require_fresh(ctx, session, user.principal)
    users.totp_disable(ctx, session, user.principal, code)
    return _account(request, user, session, ctx, shown={"notice": "TOTP is off."})


@router.post("/account/password", name="ui.password_change")
def password_change(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    current_password: Annotated[str, Form(min_length=1, max_length=limits.PASSWORD_MAX_LENGTH)],
    new_password: Annotated[
        str, Form(min_length=limits.PASSWORD_MIN_LENGTH, max_length=limits.PASSWORD_MAX_LENGTH)
    ],
    new_password_again: Annotated[str, Form(max_length=limits.PASSWORD_MAX_LENGTH)],
) -> Response:
    """Change the password (fresh session and the current password, as
    ``POST /v1/me/password``): the caller's other sessions are signed out."""
    if not hmac.compare_digest(new_password.encode(), new_password_again.encode()):
        raise FormatError("the new password and its repetition differ")
    killed = lifecycle.change_password(ctx, session, user.principal, current_password, new_password)
    notice = f"Password changed; {killed} other session(s) signed out."
    return _account(request, user, session, ctx, shown={"notice": notice})


@router.post("/account/tokens", name="ui.token_create")
def token_create(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    name: Annotated[str, Form(min_length=1, max_length=limits.NAME_MAX_LENGTH)],
    scopes: Annotated[list[str], Form(min_length=1, max_length=limits.TOKEN_MAX_SCOPES)],
    expires_in_days: Annotated[int, Form(ge=1, le=365)] = 30,
) -> Response:
    """Create a personal API token (as ``POST /v1/me/tokens``: write scopes need a fresh
    session); its secret is on this answer only."""
    if WRITE_SCOPES & set(scopes):
        require_fresh(ctx, session, user.principal)
    secret, row = users.create_pat(
        ctx,
        session,
        user.principal,
        name=name,
        scopes=scopes,
        expires_in_days=expires_in_days,
    )
    return _account(request, user, session, ctx, shown={"new_token": (secret, row)}, status=201)


@router.post("/account/sessions/revoke-others", name="ui.sessions_revoke_others")
def sessions_revoke_others(request: Request, user: Actor, session: DbSession, ctx: Ctx) -> Response:
    """Sign out every other session of the caller (fresh session, as
    ``DELETE /v1/me/sessions``)."""
    killed = lifecycle.revoke_other_sessions(ctx, session, user.principal)
    notice = f"{killed} other session(s) signed out."
    return _account(request, user, session, ctx, shown={"notice": notice})


@router.post("/account/sessions/{session_id}/revoke", name="ui.session_revoke")
def session_revoke(
    request: Request, session_id: str, user: Actor, session: DbSession, ctx: Ctx
) -> Response:
    """Sign out one of the caller's sessions (as ``DELETE /v1/me/sessions/{id}``: another
    than the calling one needs a fresh session; the calling one is a sign-out)."""
    lifecycle.revoke_session(ctx, session, user.principal, session_id)
    if session_id == user.principal.token_id:
        return see_other(request, "ui.signin")
    return see_other(request, "ui.account")


@router.post("/account/tokens/{token_id}/revoke", name="ui.token_revoke")
def token_revoke(
    request: Request, token_id: str, user: Actor, session: DbSession, ctx: Ctx
) -> Response:
    """Revoke one of the caller's personal API tokens (as ``DELETE /v1/me/tokens/{t}``)."""
    users.revoke_pat(ctx, session, user.principal, token_id)
    return see_other(request, "ui.account")


@router.post("/account/invitations/{invitation_id}/accept", name="ui.invitation_accept")
def invitation_accept(
    request: Request, invitation_id: str, user: Actor, session: DbSession, ctx: Ctx
) -> Response:
    """Accept an invitation addressed to the caller."""
    invitations.answer(ctx, session, user.principal, invitation_id, accept=True)
    return see_other(request, "ui.account")


@router.post("/account/invitations/{invitation_id}/decline", name="ui.invitation_decline")
def invitation_decline(
    request: Request, invitation_id: str, user: Actor, session: DbSession, ctx: Ctx
) -> Response:
    """Decline an invitation addressed to the caller."""
    invitations.answer(ctx, session, user.principal, invitation_id, accept=False)
    return see_other(request, "ui.account")
