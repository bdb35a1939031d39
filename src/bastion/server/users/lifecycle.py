"""Account lifecycle: re-authentication, password change, sessions, reset and disable.

Self-service functions take ``(ctx, session, principal, ...)``; the server-admin ones
(:func:`reset_password`, :func:`set_disabled`) take an e-mail address and an actor
and are called by ``bastion server user ...`` on the database directly: the fleet API
has no server-wide admin role (docs/adr/0020-account-lifecycle-and-metrics.md).
Every function commits its change with its audit entry.

Killing credentials is one statement, :func:`revoke_tokens`: every session and
personal API token it covers gets ``revoked_at``, so the next request made with any
of them is a 401 (``authenticate_token`` also refuses every token of a disabled user).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError, FormatError, NotFoundError
from bastion.server.audit.service import record
from bastion.server.auth.principal import Principal
from bastion.server.auth.reauth import require_fresh
from bastion.server.context import AppContext
from bastion.server.users import repository as repo
from bastion.server.users import service
from bastion.server.users.models import User, UserToken


def revoke_tokens(
    session: Session,
    user_id: str,
    now: dt.datetime,
    *,
    kinds: tuple[str, ...] = (service.SESSION, service.PAT),
    keep: str | None = None,
) -> int:
    """Revoke the user's live tokens of ``kinds`` (except ``keep``); returns how many."""
    query = (
        update(UserToken)
        .where(
            UserToken.user_id == user_id,
            UserToken.kind.in_(kinds),
            UserToken.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    if keep is not None:
        query = query.where(UserToken.id != keep)
    result = session.execute(query)
    return int(getattr(result, "rowcount", 0) or 0)


def check_new_password(password: str) -> None:
    """FormatError unless ``password`` is long enough (and not absurdly long)."""
    if len(password) < limits.PASSWORD_MIN_LENGTH:
        raise FormatError(
            f"new password has {len(password)} characters, at least "
            f"{limits.PASSWORD_MIN_LENGTH} needed"
        )
    if len(password) > limits.PASSWORD_MAX_LENGTH:
        raise FormatError(f"new password is longer than {limits.PASSWORD_MAX_LENGTH} characters")


def _refused(ctx: AppContext, session: Session, user: User, event: str, reason: str) -> None:
    """Audit a refused password or second factor of a logged-in user, then raise."""
    now = ctx.clock.now()
    session.rollback()
    if ctx.login_delay is not None:
        ctx.login_delay.failed(f"email:{user.email}")
    record(session, event, f"user:{user.id}", {"reason": reason}, at=now)
    session.commit()
    raise AuthError(f"re-authentication refused: {reason}")


def reauthenticate(
    ctx: AppContext,
    session: Session,
    principal: Principal,
    password: str,
    *,
    totp_code: str | None,
    recovery_code: str | None,
    client: str,
) -> UserToken:
    """Prove password (+ second factor when enrolled) again; refreshes the session.

    Throttled and delayed like a login; failures are audited as ``user.reauth_failed``.
    """
    ctx.login_limiter.hit(f"addr:{client}")
    user = service.get_me(session, principal)
    if ctx.login_delay is not None:
        ctx.login_delay.wait(f"email:{user.email}")
    row = session.get(UserToken, principal.token_id) if principal.token_id else None
    if row is None or row.kind != service.SESSION:
        raise AuthError("re-authentication needs a login session")
    try:
        ctx.passwords.verify(user.password_hash, password)
    except AuthError:
        _refused(ctx, session, user, "user.reauth_failed", "wrong password")
    now = ctx.clock.now()
    two_factor = row.two_factor
    if user.totp_enabled:
        if totp_code:
            try:
                service._spend_totp(ctx, session, user, totp_code, now)
            except AuthError as exc:
                _refused(ctx, session, user, "user.reauth_failed", f"second factor: {exc}")
        elif recovery_code:
            if not _spend_recovery_code(session, user, recovery_code, now):
                _refused(ctx, session, user, "user.reauth_failed", "wrong recovery code")
        else:
            raise AuthError("second factor required: give a TOTP code or a recovery code")
        two_factor = True
    row.authenticated_at = now
    row.two_factor = two_factor
    record(
        session,
        "user.reauth",
        principal.actor,
        {"session": row.id, "two_factor": two_factor, "client": client},
        at=now,
    )
    session.commit()
    if ctx.login_delay is not None:
        ctx.login_delay.succeeded(f"email:{user.email}")
    return row


def _spend_recovery_code(session: Session, user: User, code: str, now: dt.datetime) -> bool:
    from bastion.server.auth import tokens, totp

    digest = totp.recovery_hash(code)
    for row in repo.unused_recovery_codes(session, user.id):
        if tokens.hmac_equal(row.code_hash, digest):
            return repo.spend_recovery_code(session, row.id, now)
    return False


def change_password(
    ctx: AppContext, session: Session, principal: Principal, current: str, new: str
) -> int:
    """Replace the caller's password; their other sessions die. Returns how many.

    Needs a fresh session (checked here too, not only by the route) and the current
    password; personal API tokens stay valid (they do not depend on the password).
    """
    require_fresh(ctx, session, principal)
    user = service.get_me(session, principal)
    try:
        ctx.passwords.verify(user.password_hash, current)
    except AuthError:
        _refused(ctx, session, user, "user.password_change_failed", "wrong current password")
    check_new_password(new)
    if new == current:
        raise FormatError("the new password is the current one")
    now = ctx.clock.now()
    user.password_hash = ctx.passwords.hash(new)
    killed = revoke_tokens(session, user.id, now, kinds=(service.SESSION,), keep=principal.token_id)
    record(session, "user.password_change", principal.actor, {"sessions_revoked": killed}, at=now)
    session.commit()
    return killed


def list_sessions(ctx: AppContext, session: Session, principal: Principal) -> list[UserToken]:
    """The caller's live sessions (not revoked, not expired), newest first."""
    now = ctx.clock.now()
    return list(
        session.execute(
            select(UserToken)
            .where(
                UserToken.user_id == principal.id,
                UserToken.kind == service.SESSION,
                UserToken.revoked_at.is_(None),
                UserToken.expires_at > now,
            )
            .order_by(UserToken.created_at.desc(), UserToken.id)
            .limit(limits.SESSIONS_LIST_MAX)
        ).scalars()
    )


def revoke_session(
    ctx: AppContext, session: Session, principal: Principal, session_id: str
) -> None:
    """Revoke one of the caller's sessions; another than the calling one needs freshness."""
    row = repo.get_token(session, principal.id, session_id)
    if row is None or row.kind != service.SESSION:
        raise NotFoundError(f"session {session_id!r} not found")
    if row.id != principal.token_id:
        require_fresh(ctx, session, principal)
    if row.revoked_at is not None:
        return
    now = ctx.clock.now()
    row.revoked_at = now
    record(session, "session.revoke", principal.actor, {"session": row.id}, at=now)
    session.commit()


def revoke_other_sessions(ctx: AppContext, session: Session, principal: Principal) -> int:
    """Revoke every session of the caller but the calling one (needs freshness)."""
    require_fresh(ctx, session, principal)
    now = ctx.clock.now()
    killed = revoke_tokens(
        session, principal.id, now, kinds=(service.SESSION,), keep=principal.token_id
    )
    record(session, "session.revoke_others", principal.actor, {"sessions": killed}, at=now)
    session.commit()
    return killed


def _user_by_email(session: Session, email: str) -> User:
    user = repo.get_user_by_email(session, service.normalise_email(email))
    if user is None:
        raise NotFoundError(f"no user with e-mail {email.strip().lower()!r}")
    return user


def reset_password(
    ctx: AppContext, session: Session, email: str, password: str, actor: str
) -> tuple[User, int]:
    """Server admin: set a new password; every session and token of the user dies."""
    check_new_password(password)
    user = _user_by_email(session, email)
    now = ctx.clock.now()
    user.password_hash = ctx.passwords.hash(password)
    killed = revoke_tokens(session, user.id, now)
    record(
        session, "user.password_reset", actor, {"user": user.id, "tokens_revoked": killed}, at=now
    )
    session.commit()
    return user, killed


def set_disabled(
    ctx: AppContext, session: Session, email: str, disabled: bool, actor: str
) -> tuple[User, int]:
    """Server admin: disable (every session and token dies) or enable an account.

    Enabling brings no credential back: the user logs in again.
    """
    user = _user_by_email(session, email)
    now = ctx.clock.now()
    user.disabled = disabled
    killed = revoke_tokens(session, user.id, now) if disabled else 0
    event = "user.disable" if disabled else "user.enable"
    record(session, event, actor, {"user": user.id, "tokens_revoked": killed}, at=now)
    session.commit()
    return user, killed
