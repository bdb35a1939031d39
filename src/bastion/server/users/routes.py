"""Users routes: signup (when enabled), login/logout, me, personal API tokens, TOTP.

=======  ==============================  ==============================
method   path                            who
=======  ==============================  ==============================
POST     /v1/auth/signup             anyone, if ``allow_signup``
POST     /v1/auth/login              anyone (rate-limited)
POST     /v1/auth/logout             user
GET      /v1/me                      user
GET      /v1/me/tokens               user (session)
POST     /v1/me/tokens               user (session)
DELETE   /v1/me/tokens/{token_id}    user (session)
POST     /v1/me/totp                 user (fresh session): begin enrolment
POST     /v1/me/totp/confirm         user (session): finish, get recovery codes
POST     /v1/me/totp/disable         user (fresh session)
POST     /v1/auth/reauth             user (session): password (+2FA) again
POST     /v1/me/password             user (fresh session): change password
GET      /v1/me/sessions             user (session)
DELETE   /v1/me/sessions             user (fresh session): all but this one
DELETE   /v1/me/sessions/{id}        user (session; fresh unless it is this one)
=======  ==============================  ==============================

"Fresh": see :mod:`bastion.server.auth.reauth` (``POST /v1/me/totp`` and tokens with
write scopes need it too).
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, FastAPI, Request, status

from bastion import limits
from bastion.errors import AuthError
from bastion.server.auth import tokens
from bastion.server.auth.deps import (
    Ctx,
    CurrentPrincipal,
    CurrentUser,
    DbSession,
    ReadSession,
    SessionUser,
    client_address,
)
from bastion.server.auth.principal import Principal, auth_registry
from bastion.server.auth.reauth import WRITE_SCOPES, FreshSessionUser, require_fresh
from bastion.server.users import lifecycle, schemas, service
from bastion.server.users.models import User, UserToken

router = APIRouter(prefix="/v1", tags=["users"])


def _token_out(row: UserToken) -> schemas.TokenOut:
    return schemas.TokenOut(
        id=row.id,
        name=row.name,
        hint=row.hint,
        scopes=row.scopes.split(),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked=row.revoked_at is not None,
    )


def _user_out(user: User) -> schemas.UserOut:
    return schemas.UserOut(
        id=user.id, email=user.email, totp_enabled=user.totp_enabled, created_at=user.created_at
    )


@router.post("/auth/signup", status_code=status.HTTP_201_CREATED)
def signup(
    body: schemas.SignupIn, ctx: Ctx, session: DbSession, principal: CurrentPrincipal
) -> schemas.UserOut:
    """Create an account (only when the server allows self sign-up)."""
    if not ctx.settings.allow_signup:
        raise AuthError("self sign-up is disabled on this server")
    user = service.create_user(ctx, session, body.email, body.password, principal.actor)
    return _user_out(user)


@router.post("/auth/login")
def login(
    body: schemas.LoginIn, request: Request, ctx: Ctx, session: DbSession, _p: CurrentPrincipal
) -> schemas.LoginOut:
    """Exchange e-mail, password and (when enrolled) a TOTP or recovery code for a session."""
    result = service.login(
        ctx,
        session,
        body.email,
        body.password,
        totp_code=body.totp,
        recovery_code=body.recovery_code,
        client=client_address(request),
    )
    return schemas.LoginOut(
        token=result.token, expires_at=result.expires_at, two_factor=result.two_factor
    )


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(principal: CurrentUser, ctx: Ctx, session: DbSession) -> None:
    """Revoke the token used for this request."""
    service.logout(ctx, session, principal)


@router.get("/me")
def me(principal: CurrentUser, session: ReadSession) -> schemas.UserOut:
    """The calling user."""
    return _user_out(service.get_me(session, principal))


@router.get("/me/tokens")
def list_tokens(principal: SessionUser, session: ReadSession) -> list[schemas.TokenOut]:
    """The caller's personal API tokens (never their secrets)."""
    return [_token_out(row) for row in service.list_pats(session, principal)]


@router.post("/me/tokens", status_code=status.HTTP_201_CREATED)
def create_token(
    body: schemas.TokenCreateIn, principal: SessionUser, ctx: Ctx, session: DbSession
) -> schemas.TokenCreatedOut:
    """Create a scoped, expiring personal API token; the secret is in this response only.

    A token with a ``write`` or ``admin`` scope needs a fresh session."""
    if WRITE_SCOPES & set(body.scopes):
        require_fresh(ctx, session, principal)
    secret, row = service.create_pat(
        ctx,
        session,
        principal,
        name=body.name,
        scopes=list(body.scopes),
        expires_in_days=body.expires_in_days,
    )
    return schemas.TokenCreatedOut(token=secret, **_token_out(row).model_dump())


@router.delete("/me/tokens/{token_id}")
def revoke_token(
    token_id: str, principal: SessionUser, ctx: Ctx, session: DbSession
) -> schemas.TokenOut:
    """Revoke one of the caller's personal API tokens."""
    return _token_out(service.revoke_pat(ctx, session, principal, token_id))


@router.post("/me/totp")
def totp_begin(principal: FreshSessionUser, ctx: Ctx, session: DbSession) -> schemas.TotpBeginOut:
    """Start TOTP enrolment: a secret and an otpauth:// URI for an authenticator app."""
    secret, uri = service.totp_begin(ctx, session, principal)
    return schemas.TotpBeginOut(secret=secret, uri=uri)


@router.post("/me/totp/confirm")
def totp_confirm(
    body: schemas.TotpCodeIn, principal: SessionUser, ctx: Ctx, session: DbSession
) -> schemas.RecoveryCodesOut:
    """Finish enrolment with a first code; returns single-use recovery codes."""
    return schemas.RecoveryCodesOut(
        recovery_codes=service.totp_confirm(ctx, session, principal, body.code)
    )


@router.post("/me/totp/disable", status_code=status.HTTP_204_NO_CONTENT)
def totp_disable(
    body: schemas.TotpCodeIn, principal: FreshSessionUser, ctx: Ctx, session: DbSession
) -> None:
    """Turn TOTP off (needs a fresh session and a current code)."""
    service.totp_disable(ctx, session, principal, body.code)


@router.post("/auth/reauth")
def reauth(
    body: schemas.ReauthIn, request: Request, principal: SessionUser, ctx: Ctx, session: DbSession
) -> schemas.ReauthOut:
    """Give the password (and second factor when enrolled) again: the session is fresh."""
    row = lifecycle.reauthenticate(
        ctx,
        session,
        principal,
        body.password,
        totp_code=body.totp,
        recovery_code=body.recovery_code,
        client=client_address(request),
    )
    assert row.authenticated_at is not None
    return schemas.ReauthOut(
        authenticated_at=row.authenticated_at,
        fresh_until=row.authenticated_at + dt.timedelta(seconds=limits.REAUTH_MAX_AGE_SECONDS),
        two_factor=row.two_factor,
    )


@router.post("/me/password")
def change_password(
    body: schemas.PasswordChangeIn, principal: FreshSessionUser, ctx: Ctx, session: DbSession
) -> schemas.PasswordChangedOut:
    """Change the caller's password; their other sessions are revoked."""
    killed = lifecycle.change_password(
        ctx, session, principal, body.current_password, body.new_password
    )
    return schemas.PasswordChangedOut(sessions_revoked=killed)


def _session_out(row: UserToken, principal: Principal) -> schemas.SessionOut:
    return schemas.SessionOut(
        id=row.id,
        name=row.name,
        hint=row.hint,
        created_at=row.created_at,
        expires_at=row.expires_at,
        authenticated_at=row.authenticated_at,
        two_factor=row.two_factor,
        current=row.id == principal.token_id,
    )


@router.get("/me/sessions")
def list_sessions(
    principal: SessionUser, ctx: Ctx, session: ReadSession
) -> list[schemas.SessionOut]:
    """The caller's live login sessions, newest first (never their secrets)."""
    return [_session_out(r, principal) for r in lifecycle.list_sessions(ctx, session, principal)]


@router.delete("/me/sessions")
def revoke_other_sessions(
    principal: FreshSessionUser, ctx: Ctx, session: DbSession
) -> schemas.SessionsRevokedOut:
    """Revoke every session of the caller but this one."""
    return schemas.SessionsRevokedOut(
        revoked=lifecycle.revoke_other_sessions(ctx, session, principal)
    )


@router.delete("/me/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_session(session_id: str, principal: SessionUser, ctx: Ctx, session: DbSession) -> None:
    """Revoke one session (another than this one needs a fresh session)."""
    lifecycle.revoke_session(ctx, session, principal, session_id)


def install(app: FastAPI) -> None:
    registry = auth_registry(app)
    registry.add_token(tokens.SESSION_PREFIX, service.authenticate_token)
    registry.add_token(tokens.PAT_PREFIX, service.authenticate_token)
    app.include_router(router)
