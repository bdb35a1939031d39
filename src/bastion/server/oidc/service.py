"""OIDC sign-in: start, callback, second factor; the outcome is a ``bst_ses_`` session.

Flow (docs/server.md "OpenID Connect", docs/adr/0021-oidc-sign-in.md):

1. :func:`begin` stores a sign-in row (SHA-256 of ``state``, ``nonce``, the PKCE
   verifier, the SHA-256 of a browser-binding cookie value, the redirect URI) and
   returns the provider's authorization URL and the cookie value.
2. :func:`finish` finds the row by ``state``, checks the cookie, and spends the state
   (an ``UPDATE ... WHERE used_at IS NULL`` committed before anything else, so a
   replayed state fails even if the first try did not finish). Then it redeems the code
   (with the PKCE verifier), verifies the ID token (authlib) against the stored nonce,
   and maps the subject to a user: a linked subject first; otherwise a verified e-mail
   of an existing user (linked now), or of an invited address (the account is created
   now, audited). Anything else is refused.
3. A user with TOTP gets a single-use ticket instead of a session, and
   :func:`second_factor` exchanges ticket + code for the session.

Sessions are marked ``auth_method="oidc"``; organisations with ``require_oidc`` accept
only those (and tokens they minted). Every refusal and every sign-in is audited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError, BastionError, FormatError, NotFoundError
from bastion.server.audit.service import record
from bastion.server.auth import tokens
from bastion.server.context import AppContext
from bastion.server.db.base import new_id
from bastion.server.oidc.models import OidcIdentity, OidcLogin
from bastion.server.oidc.provider import OidcProvider
from bastion.server.oidc.verify import IdTokenClaims
from bastion.server.orgs import repository as orgs_repo
from bastion.server.users import repository as users_repo
from bastion.server.users import service as users
from bastion.server.users.models import User, UserToken

OIDC = "oidc"
LOOPBACK_CALLBACK = "http://127.0.0.1:{port}/callback"


@dataclass(frozen=True, slots=True)
class Started:
    authorization_url: str
    browser_binding: str


@dataclass(frozen=True, slots=True)
class Finished:
    """A session (``token``) or, when the user has TOTP, a second-factor ``ticket``."""

    token: str | None = None
    expires_at: dt.datetime | None = None
    two_factor: bool = False
    ticket: str | None = None
    ticket_expires_at: dt.datetime | None = None


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _provider(ctx: AppContext) -> OidcProvider:
    if ctx.oidc is None:
        raise NotFoundError("OpenID Connect sign-in is not configured on this server")
    return ctx.oidc


def _bounded(value: str | None, what: str) -> str:
    if not value:
        raise FormatError(f"the sign-in callback has no {what}")
    if len(value) > limits.OIDC_PARAM_MAX_LENGTH:
        raise FormatError(
            f"{what} is {len(value)} characters, limit {limits.OIDC_PARAM_MAX_LENGTH}"
        )
    return value


def begin(ctx: AppContext, session: Session, *, cli_port: int | None, client: str) -> Started:
    """Store a new sign-in and return where to send the browser."""
    provider = _provider(ctx)
    ctx.login_limiter.hit(f"addr:{client}")
    if cli_port is not None:
        if not ctx.settings.oidc_allow_loopback_redirect:
            raise AuthError("this server does not allow loopback redirects for the CLI")
        redirect_uri = LOOPBACK_CALLBACK.format(port=cli_port)
    elif ctx.settings.oidc_redirect_uri:
        redirect_uri = ctx.settings.oidc_redirect_uri
    else:
        raise NotFoundError("this server has no oidc_redirect_uri: use 'bastion login --oidc'")
    now = ctx.clock.now()
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(48)  # 64 characters (RFC 7636: 43 to 128)
    browser = secrets.token_urlsafe(32)
    url = provider.authorization_url(
        redirect_uri=redirect_uri, state=state, nonce=nonce, code_verifier=verifier
    )
    session.execute(
        delete(OidcLogin).where(
            OidcLogin.expires_at < now - dt.timedelta(seconds=limits.OIDC_LOGIN_TTL_SECONDS)
        )
    )
    session.add(
        OidcLogin(
            id=new_id(),
            state_hash=_digest(state),
            nonce=nonce,
            code_verifier=verifier,
            browser_hash=_digest(browser),
            redirect_uri=redirect_uri,
            client=client[:128],
            created_at=now,
            expires_at=now + dt.timedelta(seconds=limits.OIDC_LOGIN_TTL_SECONDS),
        )
    )
    session.commit()
    return Started(authorization_url=url, browser_binding=browser)


def _refuse(
    ctx: AppContext,
    session: Session,
    client: str,
    reason: str,
    *,
    error: BastionError,
    user_id: str | None = None,
    now: dt.datetime,
) -> BastionError:
    """Audit a refused sign-in (committed) and return the error to raise."""
    session.rollback()
    details = {"client": client, "method": OIDC, "reason": reason[:200]}
    if user_id is not None:
        details["user"] = user_id
    record(session, "user.login_failed", f"anonymous@{client}", details, at=now)
    session.commit()
    return error


def finish(
    ctx: AppContext,
    session: Session,
    *,
    state: str | None,
    code: str | None,
    error: str | None,
    browser_binding: str | None,
    client: str,
) -> Finished:
    """Complete a sign-in from the provider's redirect (rules in the module docstring)."""
    provider = _provider(ctx)
    ctx.login_limiter.hit(f"addr:{client}")
    now = ctx.clock.now()
    state = _bounded(state, "state")
    row = session.execute(
        select(OidcLogin).where(OidcLogin.state_hash == _digest(state))
    ).scalar_one_or_none()
    if row is None:
        raise _refuse(
            ctx,
            session,
            client,
            "unknown state",
            error=AuthError("sign-in state is not known (start again)"),
            now=now,
        )
    binding = browser_binding or ""
    if len(binding) > limits.OIDC_PARAM_MAX_LENGTH or not hmac.compare_digest(
        _digest(binding), row.browser_hash
    ):
        raise _refuse(
            ctx,
            session,
            client,
            "browser binding cookie missing or wrong",
            error=AuthError("this sign-in was started by another browser or client"),
            now=now,
        )
    spent = session.execute(
        update(OidcLogin)
        .where(OidcLogin.id == row.id, OidcLogin.used_at.is_(None))
        .values(used_at=now)
    )
    session.commit()
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        raise _refuse(
            ctx,
            session,
            client,
            "state replayed",
            error=AuthError("sign-in state was already used (start again)"),
            now=now,
        )
    if row.expires_at <= now:
        raise _refuse(
            ctx, session, client, "state expired", error=AuthError("sign-in expired"), now=now
        )
    if error:
        raise _refuse(
            ctx,
            session,
            client,
            f"provider error {error[:64]}",
            error=AuthError(f"the OIDC provider refused the sign-in: {error[:64]}"),
            now=now,
        )
    try:
        code = _bounded(code, "code")
        answer = provider.exchange_code(
            code=code, redirect_uri=row.redirect_uri, code_verifier=row.code_verifier
        )
        claims = provider.verify(answer, nonce=row.nonce, now=now)
        user = _map_user(ctx, session, claims, now=now)
    except BastionError as exc:
        raise _refuse(ctx, session, client, str(exc), error=exc, now=now) from exc
    if user.disabled:
        raise _refuse(
            ctx,
            session,
            client,
            "user disabled",
            error=AuthError("this account is disabled"),
            user_id=user.id,
            now=now,
        )
    if user.totp_enabled:
        ticket = secrets.token_urlsafe(32)
        fresh = session.get(OidcLogin, row.id)
        assert fresh is not None
        fresh.user_id = user.id
        fresh.ticket_hash = _digest(ticket)
        fresh.ticket_expires_at = now + dt.timedelta(seconds=limits.OIDC_TICKET_TTL_SECONDS)
        record(
            session,
            "user.oidc_second_factor_asked",
            f"user:{user.id}",
            {"client": client, "issuer": claims.issuer},
            at=now,
        )
        session.commit()
        return Finished(ticket=ticket, ticket_expires_at=fresh.ticket_expires_at)
    return _issue_session(ctx, session, user, client=client, two_factor=False, now=now)


def second_factor(
    ctx: AppContext,
    session: Session,
    *,
    ticket: str,
    totp_code: str | None,
    recovery_code: str | None,
    client: str,
) -> Finished:
    """Exchange a second-factor ticket and a TOTP or recovery code for a session."""
    _provider(ctx)
    ctx.login_limiter.hit(f"addr:{client}")
    now = ctx.clock.now()
    ticket = _bounded(ticket, "ticket")
    row = session.execute(
        select(OidcLogin).where(OidcLogin.ticket_hash == _digest(ticket))
    ).scalar_one_or_none()
    if row is None or row.user_id is None or row.ticket_expires_at is None:
        raise _refuse(
            ctx, session, client, "unknown ticket", error=AuthError("ticket is not known"), now=now
        )
    user_id = row.user_id
    spent = session.execute(
        update(OidcLogin)
        .where(OidcLogin.id == row.id, OidcLogin.ticket_used_at.is_(None))
        .values(ticket_used_at=now)
    )
    session.commit()
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        raise _refuse(
            ctx,
            session,
            client,
            "ticket replayed",
            error=AuthError("ticket was already used (sign in again)"),
            user_id=user_id,
            now=now,
        )
    if row.ticket_expires_at <= now:
        raise _refuse(
            ctx,
            session,
            client,
            "ticket expired",
            error=AuthError("ticket expired (sign in again)"),
            user_id=user_id,
            now=now,
        )
    user = users_repo.get_user(session, user_id)
    if user is None or user.disabled or not user.totp_enabled:
        raise _refuse(
            ctx,
            session,
            client,
            "user gone, disabled or without TOTP",
            error=AuthError("this account cannot finish the sign-in"),
            user_id=user_id,
            now=now,
        )
    # the users feature's own checks: a TOTP step or recovery code is spent once, and a
    # wrong one is audited as a failed second factor (they raise AuthError)
    if totp_code:
        try:
            users._spend_totp(ctx, session, user, totp_code, now)
        except AuthError as exc:
            users._second_factor_failed(
                ctx, session, user, client=client, method="totp", reason=str(exc), now=now
            )
    elif recovery_code:
        users._use_recovery_code(ctx, session, user, recovery_code, client=client, now=now)
    else:
        raise AuthError("give a TOTP code or a recovery code (the ticket is now spent)")
    return _issue_session(ctx, session, user, client=client, two_factor=True, now=now)


def _map_user(
    ctx: AppContext, session: Session, claims: IdTokenClaims, *, now: dt.datetime
) -> User:
    """The user this subject signs in as; AuthError when there is none to use."""
    linked = session.execute(
        select(OidcIdentity).where(
            OidcIdentity.issuer == claims.issuer, OidcIdentity.subject == claims.subject
        )
    ).scalar_one_or_none()
    if linked is not None:
        user = users_repo.get_user(session, linked.user_id)
        if user is None:
            raise AuthError("the linked account no longer exists")
        linked.last_login_at = now
        return user
    if not claims.email or not claims.email_verified:
        raise AuthError(
            "the OIDC provider did not assert a verified e-mail address (email_verified "
            "must be true) and this subject is not linked to an account"
        )
    address = users.normalise_email(claims.email)
    user = users_repo.get_user_by_email(session, address)
    if user is None:
        invited = orgs_repo.pending_invitations_for_email(session, address, now, 1)
        if not invited:
            raise AuthError(
                f"no account for {address}: ask an administrator to create one or an "
                "organisation owner to invite this address"
            )
        user = User(
            id=new_id(),
            email=address,
            # nobody knows this password: the account signs in through OIDC only
            password_hash=ctx.passwords.hash(secrets.token_urlsafe(32)),
            created_at=now,
            disabled=False,
            totp_enabled=False,
        )
        session.add(user)
        session.flush()
        record(
            session,
            "user.create",
            f"oidc:{claims.issuer}",
            {"user": user.id, "email": address, "via": "oidc invitation"},
            at=now,
        )
    else:
        other = session.execute(
            select(OidcIdentity).where(
                OidcIdentity.user_id == user.id, OidcIdentity.issuer == claims.issuer
            )
        ).scalar_one_or_none()
        if other is not None:
            raise AuthError(f"the account {address} is linked to another subject of this provider")
    session.add(
        OidcIdentity(
            id=new_id(),
            user_id=user.id,
            issuer=claims.issuer,
            subject=claims.subject,
            email=address,
            created_at=now,
            last_login_at=now,
        )
    )
    try:
        session.flush()
    except IntegrityError as exc:
        raise AuthError("this subject was linked by a concurrent sign-in; try again") from exc
    record(
        session,
        "user.oidc_link",
        f"user:{user.id}",
        {"issuer": claims.issuer, "subject": claims.subject, "email": address},
        at=now,
    )
    return user


def _issue_session(
    ctx: AppContext,
    session: Session,
    user: User,
    *,
    client: str,
    two_factor: bool,
    now: dt.datetime,
) -> Finished:
    """The same ``bst_ses_`` session a password login makes, marked as an OIDC login."""
    token, digest = tokens.new_token(tokens.SESSION_PREFIX)
    expires = now + dt.timedelta(seconds=ctx.settings.session_ttl)
    session.add(
        UserToken(
            id=new_id(),
            user_id=user.id,
            kind=users.SESSION,
            name=f"oidc login from {client}"[:128],
            token_hash=digest,
            hint=tokens.token_hint(token),
            scopes="admin",
            created_at=now,
            expires_at=expires,
            two_factor=two_factor,
            auth_method=OIDC,
        )
    )
    record(
        session,
        "user.login",
        f"user:{user.id}",
        {"client": client, "two_factor": two_factor, "method": OIDC},
        at=now,
    )
    session.commit()
    return Finished(token=token, expires_at=expires, two_factor=two_factor)
