"""Re-authentication: security-relevant changes need a session that proved itself lately.

A session is *fresh* when its holder gave the password, and the second factor where
one is enrolled, at most :data:`bastion.limits.REAUTH_MAX_AGE_SECONDS` ago: at login,
or later through ``POST /v1/auth/reauth``. Personal API tokens are never fresh.
:func:`require_fresh` is the one check; routes take it as the dependency
:data:`FreshSessionUser`, or call it for a change that needs it only sometimes (a
token with write scopes, revoking a session other than the calling one).

What needs a fresh session (docs/adr/0020-account-lifecycle-and-metrics.md):

* ``POST /v1/me/password`` (change password; the body carries the old one too),
* ``POST /v1/me/totp`` (start enrolling a new second factor) and
  ``POST /v1/me/totp/disable``,
* ``POST /v1/me/tokens`` with a ``write`` or ``admin`` scope,
* ``DELETE /v1/me/sessions`` and ``DELETE /v1/me/sessions/{id}`` of another session.

A stale session gets 403 with the error code ``reauth_required``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError, ReauthRequiredError
from bastion.server.auth.deps import get_ctx, read_session, require_session_user
from bastion.server.auth.principal import Principal, Via
from bastion.server.context import AppContext

#: token scopes whose creation needs a fresh session
WRITE_SCOPES = frozenset({"write", "admin"})


def is_fresh(principal: Principal, now: dt.datetime, *, totp_enabled: bool) -> bool:
    """True when ``principal`` is a session authenticated recently enough (pure)."""
    if principal.via is not Via.SESSION or principal.authenticated_at is None:
        return False
    if totp_enabled and not principal.two_factor:
        return False
    age = now - principal.authenticated_at
    return dt.timedelta(0) <= age <= dt.timedelta(seconds=limits.REAUTH_MAX_AGE_SECONDS)


def require_fresh(ctx: AppContext, session: Session, principal: Principal) -> None:
    """ReauthRequiredError (403 ``reauth_required``) unless the session is fresh."""
    from bastion.server.users.repository import get_user

    if principal.via is not Via.SESSION:
        raise AuthError("this change needs a login session, not a personal API token")
    user = get_user(session, principal.id)
    if user is None:
        raise AuthError("the calling user no longer exists")
    if not is_fresh(principal, ctx.clock.now(), totp_enabled=user.totp_enabled):
        factor = " and second factor" if user.totp_enabled else ""
        raise ReauthRequiredError(
            f"this change needs a recent login: give your password{factor} again "
            f"(POST /v1/auth/reauth; fresh for {limits.REAUTH_MAX_AGE_SECONDS // 60} minutes)"
        )


def fresh_session_user(
    principal: Annotated[Principal, Depends(require_session_user)],
    ctx: Annotated[AppContext, Depends(get_ctx)],
    session: Annotated[Session, Depends(read_session)],
) -> Principal:
    """The dependency form of :func:`require_fresh`."""
    require_fresh(ctx, session, principal)
    return principal


FreshSessionUser = Annotated[Principal, Depends(fresh_session_user)]
