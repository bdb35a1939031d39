"""Users: accounts, login sessions, personal API tokens and TOTP, with audit entries.

Every function takes the app context and a session and owns its transaction: it
commits what it changed together with the audit entry that describes it. Failed
logins, throttled logins and failed second factors are audited too (committed before
the error is raised). TOTP seeds are stored sealed with the server key
(:mod:`bastion.server.secretbox`); TOTP steps and recovery codes are spent with
statements that let only one of several concurrent logins win.

Token authentication (:func:`authenticate_token`) is registered for the ``bst_ses_``
and ``bst_pat_`` prefixes by :mod:`bastion.server.users.routes`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bastion.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    ExpiredError,
    FormatError,
    NotFoundError,
    RateLimitError,
    RevokedError,
)
from bastion.server.audit.service import record
from bastion.server.auth import tokens, totp
from bastion.server.auth.principal import Principal, PrincipalKind, Via
from bastion.server.auth.rbac import SCOPES
from bastion.server.context import AppContext
from bastion.server.db.base import new_id
from bastion.server.secretbox import SecretBox
from bastion.server.users import repository as repo
from bastion.server.users.models import RecoveryCode, User, UserToken

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
SESSION = "session"
PAT = "pat"


def normalise_email(email: str) -> str:
    """Lower-cased, stripped e-mail; FormatError if it is not one."""
    value = email.strip().lower()
    if not EMAIL_RE.match(value):
        raise FormatError(f"e-mail address {email[:64]!r} is not valid")
    return value


def create_user(ctx: AppContext, session: Session, email: str, password: str, actor: str) -> User:
    """A new user with an argon2id password hash; ConflictError if the e-mail exists."""
    address = normalise_email(email)
    if repo.get_user_by_email(session, address) is not None:
        raise ConflictError(f"a user with e-mail {address!r} already exists")
    now = ctx.clock.now()
    user = User(
        id=new_id(),
        email=address,
        password_hash=ctx.passwords.hash(password),
        created_at=now,
        disabled=False,
        totp_enabled=False,
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:
        raise ConflictError(f"a user with e-mail {address!r} already exists") from exc
    record(session, "user.create", actor, {"user": user.id, "email": address}, at=now)
    session.commit()
    return user


@dataclass(frozen=True, slots=True)
class LoginResult:
    token: str
    expires_at: dt.datetime
    two_factor: bool


def login(
    ctx: AppContext,
    session: Session,
    email: str,
    password: str,
    *,
    totp_code: str | None,
    recovery_code: str | None,
    client: str,
) -> LoginResult:
    """Check password (and second factor when enrolled); issue a session token.

    Order: the caller's address is throttled first (429, audited); then the account's
    guessing delay is waited out (a delay, never a lock: see
    :class:`~bastion.server.auth.ratelimit.LoginDelay`); then password, then second
    factor. Failed passwords and failed second factors are audited and counted
    against the account.
    """
    address = email.strip().lower()
    now = ctx.clock.now()
    try:
        ctx.login_limiter.hit(f"addr:{client}")
    except RateLimitError:
        session.rollback()
        record(
            session,
            "user.login_throttled",
            f"anonymous@{client}",
            {"email": address[:254], "client": client},
            at=now,
        )
        session.commit()
        raise
    if ctx.login_delay is not None:
        ctx.login_delay.wait(f"email:{address}")
    user = repo.get_user_by_email(session, address)
    if user is None:
        ctx.passwords.burn(password)
        _login_failed(ctx, session, address, client, "unknown user", now=now)
    assert user is not None
    try:
        ctx.passwords.verify(user.password_hash, password)
    except AuthError:
        _login_failed(ctx, session, address, client, "wrong password", now=now)
    if user.disabled:
        _login_failed(ctx, session, address, client, "user disabled", now=now)
    two_factor = False
    if user.totp_enabled:
        if totp_code:
            try:
                _spend_totp(ctx, session, user, totp_code, now)
            except AuthError as exc:
                _second_factor_failed(
                    ctx, session, user, client=client, method="totp", reason=str(exc), now=now
                )
        elif recovery_code:
            _use_recovery_code(ctx, session, user, recovery_code, client=client, now=now)
        else:
            raise AuthError("second factor required: give a TOTP code or a recovery code")
        two_factor = True
    if ctx.passwords.needs_rehash(user.password_hash):
        user.password_hash = ctx.passwords.hash(password)
    token, digest = tokens.new_token(tokens.SESSION_PREFIX)
    expires = now + dt.timedelta(seconds=ctx.settings.session_ttl)
    session.add(
        UserToken(
            id=new_id(),
            user_id=user.id,
            kind=SESSION,
            name=f"login from {client}"[:128],
            token_hash=digest,
            hint=tokens.token_hint(token),
            scopes="admin",
            created_at=now,
            expires_at=expires,
            two_factor=two_factor,
        )
    )
    record(
        session,
        "user.login",
        f"user:{user.id}",
        {"client": client, "two_factor": two_factor},
        at=now,
    )
    session.commit()
    if ctx.login_delay is not None:
        ctx.login_delay.succeeded(f"email:{address}")
    return LoginResult(token=token, expires_at=expires, two_factor=two_factor)


def _login_failed(
    ctx: AppContext, session: Session, email: str, client: str, reason: str, *, now: dt.datetime
) -> None:
    session.rollback()
    if ctx.login_delay is not None:
        ctx.login_delay.failed(f"email:{email}")
    record(
        session,
        "user.login_failed",
        f"anonymous@{client}",
        {"email": email, "reason": reason},
        at=now,
    )
    session.commit()
    raise AuthError("wrong e-mail, password or second factor")


def _second_factor_failed(
    ctx: AppContext,
    session: Session,
    user: User,
    *,
    client: str,
    method: str,
    reason: str,
    now: dt.datetime,
) -> None:
    """Audit a right password with a wrong second factor (the password is known!)."""
    session.rollback()
    if ctx.login_delay is not None:
        ctx.login_delay.failed(f"email:{user.email}")
    record(
        session,
        "user.second_factor_failed",
        f"anonymous@{client}",
        {"user": user.id, "email": user.email, "method": method, "reason": reason},
        at=now,
    )
    session.commit()
    raise AuthError("wrong e-mail, password or second factor")


def _use_recovery_code(
    ctx: AppContext, session: Session, user: User, code: str, *, client: str, now: dt.datetime
) -> None:
    digest = totp.recovery_hash(code)
    for row in repo.unused_recovery_codes(session, user.id):
        if tokens.hmac_equal(row.code_hash, digest):
            if not repo.spend_recovery_code(session, row.id, now):
                break  # another login spent it a moment ago
            record(
                session, "user.recovery_code_used", f"user:{user.id}", {"client": client}, at=now
            )
            return
    _second_factor_failed(
        ctx,
        session,
        user,
        client=client,
        method="recovery_code",
        reason="wrong recovery code",
        now=now,
    )


def _totp_context(user: User) -> str:
    return f"totp:{user.id}"


def _box(ctx: AppContext) -> SecretBox:
    if ctx.secret_box is None:
        raise ConfigError("this server context has no secret key to open TOTP secrets")
    return ctx.secret_box


def _spend_totp(ctx: AppContext, session: Session, user: User, code: str, now: dt.datetime) -> None:
    """Check ``code`` and spend its time step; AuthError if wrong or already spent.

    The step is recorded in ``used_totp_steps`` (primary key user, step) in this
    transaction, so of two logins racing with one code only one can commit.
    """
    if user.totp_secret is None:
        raise ConflictError("TOTP enrolment was not started")
    secret = _box(ctx).open(user.totp_secret, _totp_context(user))
    step = totp.verify_totp(secret, code, now, user.totp_last_step)
    if not repo.spend_totp_step(session, user.id, step, now):
        raise AuthError("TOTP code was already used")
    user.totp_last_step = step
    repo.forget_totp_steps(session, user.id, before=step - 2 * totp.DRIFT_STEPS - 1)


def authenticate_token(session: Session, token: str, now: dt.datetime) -> Principal:
    """The user principal for a ``bst_ses_``/``bst_pat_`` token; AuthError otherwise."""
    prefix = tokens.SESSION_PREFIX if token.startswith(tokens.SESSION_PREFIX) else tokens.PAT_PREFIX
    tokens.check_format(token, prefix)
    row = repo.get_token_by_hash(session, tokens.token_hash(token))
    if row is None:
        raise AuthError("token is not known")
    expected_kind = SESSION if prefix == tokens.SESSION_PREFIX else PAT
    if row.kind != expected_kind:
        raise AuthError("token is not known")
    if row.revoked_at is not None:
        raise RevokedError(f"token {row.hint} was revoked")
    if row.expires_at <= now:
        raise ExpiredError(f"token {row.hint} expired at {row.expires_at.isoformat()}")
    user = repo.get_user(session, row.user_id)
    if user is None or user.disabled:
        raise AuthError("token's user is disabled")
    scopes = frozenset(row.scopes.split()) & frozenset(SCOPES)
    return Principal(
        kind=PrincipalKind.USER,
        id=user.id,
        via=Via.SESSION if row.kind == SESSION else Via.PAT,
        scopes=scopes,
        token_id=row.id,
        two_factor=row.two_factor,
        oidc=row.auth_method == "oidc",
    )


def logout(ctx: AppContext, session: Session, principal: Principal) -> None:
    """Revoke the session (or token) the caller used."""
    row = session.get(UserToken, principal.token_id) if principal.token_id else None
    if row is None:
        raise NotFoundError("the calling session does not exist")
    now = ctx.clock.now()
    row.revoked_at = now
    record(session, "user.logout", principal.actor, {"token": row.id}, at=now)
    session.commit()


def create_pat(
    ctx: AppContext,
    session: Session,
    principal: Principal,
    *,
    name: str,
    scopes: list[str],
    expires_in_days: int,
) -> tuple[str, UserToken]:
    """A personal API token; returns ``(secret, row)``: the secret is shown only once."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise FormatError(
            f"unknown token scopes {sorted(unknown)}; expected some of {list(SCOPES)}"
        )
    now = ctx.clock.now()
    lifetime = min(
        dt.timedelta(days=expires_in_days), dt.timedelta(seconds=ctx.settings.token_max_ttl)
    )
    token, digest = tokens.new_token(tokens.PAT_PREFIX)
    row = UserToken(
        id=new_id(),
        user_id=principal.id,
        kind=PAT,
        name=name,
        token_hash=digest,
        hint=tokens.token_hint(token),
        scopes=" ".join(sorted(set(scopes))),
        created_at=now,
        expires_at=now + lifetime,
        two_factor=principal.two_factor,
        auth_method="oidc" if principal.oidc else "password",
    )
    session.add(row)
    record(
        session,
        "token.create",
        principal.actor,
        {
            "token": row.id,
            "name": name,
            "scopes": sorted(set(scopes)),
            "expires": row.expires_at.isoformat(),
        },
        at=now,
    )
    session.commit()
    return token, row


def list_pats(session: Session, principal: Principal) -> list[UserToken]:
    """The caller's personal API tokens (no secrets)."""
    return repo.list_tokens(session, principal.id, PAT)


def revoke_pat(ctx: AppContext, session: Session, principal: Principal, token_id: str) -> UserToken:
    """Revoke one of the caller's personal API tokens."""
    row = repo.get_token(session, principal.id, token_id)
    if row is None or row.kind != PAT:
        raise NotFoundError(f"token {token_id!r} not found")
    now = ctx.clock.now()
    if row.revoked_at is None:
        row.revoked_at = now
        record(session, "token.revoke", principal.actor, {"token": row.id}, at=now)
        session.commit()
    return row


def get_me(session: Session, principal: Principal) -> User:
    user = repo.get_user(session, principal.id)
    if user is None:
        raise NotFoundError("user not found")
    return user


def totp_begin(ctx: AppContext, session: Session, principal: Principal) -> tuple[str, str]:
    """Start TOTP enrolment: a new pending secret and its ``otpauth://`` URI."""
    user = get_me(session, principal)
    if user.totp_enabled:
        raise ConflictError("TOTP is already enabled; disable it first")
    secret = totp.new_secret()
    user.totp_secret = _box(ctx).seal(secret, _totp_context(user))
    user.totp_last_step = None
    repo.forget_totp_steps(session, user.id)
    session.commit()
    return secret, totp.provisioning_uri(secret, user.email, ctx.settings.totp_issuer)


def totp_confirm(ctx: AppContext, session: Session, principal: Principal, code: str) -> list[str]:
    """Finish enrolment with a first code; returns fresh recovery codes (shown once)."""
    user = get_me(session, principal)
    if user.totp_enabled:
        raise ConflictError("TOTP is already enabled")
    if user.totp_secret is None:
        raise ConflictError("TOTP enrolment was not started")
    now = ctx.clock.now()
    _spend_totp(ctx, session, user, code, now)
    user.totp_enabled = True
    codes = totp.new_recovery_codes()
    repo.delete_recovery_codes(session, user.id)
    for code_text in codes:
        session.add(
            RecoveryCode(id=new_id(), user_id=user.id, code_hash=totp.recovery_hash(code_text))
        )
    record(session, "user.totp_enable", principal.actor, {}, at=now)
    session.commit()
    return codes


def totp_disable(ctx: AppContext, session: Session, principal: Principal, code: str) -> None:
    """Turn TOTP off; needs a current code."""
    user = get_me(session, principal)
    if not user.totp_enabled or user.totp_secret is None:
        raise ConflictError("TOTP is not enabled")
    now = ctx.clock.now()
    try:
        _spend_totp(ctx, session, user, code, now)
    except AuthError as exc:
        session.rollback()
        record(
            session,
            "user.second_factor_failed",
            principal.actor,
            {"user": user.id, "method": "totp", "reason": str(exc), "action": "disable"},
            at=now,
        )
        session.commit()
        raise
    user.totp_enabled = False
    user.totp_secret = None
    user.totp_last_step = None
    repo.delete_recovery_codes(session, user.id)
    repo.forget_totp_steps(session, user.id)
    # tokens minted behind the second factor no longer satisfy an organisation's 2FA rule
    for kind in (SESSION, PAT):
        for row in repo.list_tokens(session, user.id, kind):
            row.two_factor = False
    record(session, "user.totp_disable", principal.actor, {}, at=now)
    session.commit()
