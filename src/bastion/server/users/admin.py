"""Account administration by an organisation's owner: reset a password, disable, enable.

The server's operator can do this to any account on the database
(``bastion server user ...``, :mod:`bastion.server.users.lifecycle`). Over HTTP (the
dashboard's user page) an organisation owner may do it to an account that is wholly
inside organisations they own (docs/adr/0020-account-lifecycle-and-metrics.md,
amendment of 2026-12-06). Every check fails closed, in this order:

1. the caller is an owner of the organisation named in the request
   (:func:`~bastion.server.auth.rbac.org_access` with ``OWNER``: 404 for a stranger,
   403 for a member; the organisation's 2FA and OIDC requirements apply) and acts with
   a login session;
2. the account is a member of that organisation (else 404: other organisations'
   accounts are not revealed), is not the caller, is owner of no organisation (owners
   are peers: only the server's operator can stop one), and every organisation it
   belongs to, or holds a fleet role in, is one the caller owns (each checked with
   ``org_access`` as in 1); else 403;
3. the caller proves password *and* second factor again in the same request
   (:func:`~bastion.server.users.lifecycle.reauthenticate`: throttled, delayed, audited,
   a TOTP step or recovery code is spent once); a caller without TOTP enrolled is
   refused (403) before any password is checked;
4. the change, with the audit entry in the organisation's log, in one transaction: a
   reset or a disable revokes every session and personal API token of the account
   (:func:`~bastion.server.users.lifecycle.revoke_tokens`), so the next request with
   any of them is a 401; enabling brings no credential back.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from bastion.errors import AuthError, NotFoundError
from bastion.server.audit.service import record
from bastion.server.auth.principal import Principal, Via
from bastion.server.auth.rbac import OrgAccess, OrgRole, org_access
from bastion.server.context import AppContext
from bastion.server.orgs import repository as orgs_repo
from bastion.server.users import lifecycle, service
from bastion.server.users import repository as repo
from bastion.server.users.models import User


@dataclass(frozen=True, slots=True)
class Proof:
    """The caller's password and second factor, given with the request."""

    password: str
    totp: str | None
    recovery_code: str | None
    client: str

    def reauthenticate(self, ctx: AppContext, session: Session, principal: Principal) -> None:
        """Prove the caller again with this password and second factor
        (:func:`bastion.server.users.lifecycle.reauthenticate`; AuthError if wrong)."""
        lifecycle.reauthenticate(
            ctx,
            session,
            principal,
            self.password,
            totp_code=self.totp,
            recovery_code=self.recovery_code,
            client=self.client,
        )


@dataclass(frozen=True, slots=True)
class Standing:
    """Whether the caller may administer an account, and why not."""

    user: User
    memberships: tuple[tuple[str, str], ...]  # (organisation name, standing)
    refusal: str | None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def standing(session: Session, access: OrgAccess, user_id: str) -> Standing:
    """Check 1 and 2 of the module docstring for ``user_id`` (NotFoundError when it is
    not a member of the caller's organisation); the refusal is a reason, not raised."""
    if access.role is not OrgRole.OWNER:
        raise AuthError(f"only an owner of organisation {access.org.name!r} may do this")
    user = repo.get_user(session, user_id)
    if user is None or orgs_repo.org_role(session, access.org.id, user_id) is None:
        raise NotFoundError(f"user {user_id!r} is not a member of this organisation")
    memberships = orgs_repo.orgs_of_user(session, user.id)
    names = tuple((org.name, role) for org, role in memberships)
    org_ids = {org.id for org, _ in memberships}
    for fleet_id in orgs_repo.fleet_roles_of_user(session, user.id):
        fleet = orgs_repo.get_fleet(session, fleet_id)
        if fleet is not None:
            org_ids.add(fleet.org_id)
    refusal: str | None = None
    if user.id == access.principal.id:
        refusal = "you cannot administer your own account here (use your account page)"
    elif any(role == OrgRole.OWNER for _, role in memberships):
        refusal = "the account owns an organisation: only the server's operator can act on it"
    else:
        for org_id in sorted(org_ids - {access.org.id}):
            try:
                org_access(session, access.principal, org_id, OrgRole.OWNER)
            except (AuthError, NotFoundError):
                refusal = "the account also belongs to an organisation you do not own"
                break
    return Standing(user, names, refusal)


def _authorised(
    ctx: AppContext, session: Session, access: OrgAccess, user_id: str, proof: Proof
) -> User:
    """Checks 1 to 3; the account to act on."""
    if access.principal.via is not Via.SESSION:
        raise AuthError("account administration needs a login session, not a token")
    found = standing(session, access, user_id)
    if found.refusal is not None:
        raise AuthError(f"you may not administer {found.user.email}: {found.refusal}")
    me = service.get_me(session, access.principal)
    if not me.totp_enabled:
        raise AuthError(
            "account administration needs your second factor: enrol TOTP on your account page"
        )
    if not (proof.totp or proof.recovery_code):
        raise AuthError("give your TOTP code (or a recovery code) with your password")
    proof.reauthenticate(ctx, session, access.principal)
    user = repo.get_user(session, found.user.id)
    if user is None:  # deleted meanwhile
        raise NotFoundError(f"user {user_id!r} no longer exists")
    return user


def reset_password(  # noqa: PLR0917 - the request's parts
    ctx: AppContext,
    session: Session,
    access: OrgAccess,
    user_id: str,
    new_password: str,
    proof: Proof,
) -> tuple[User, int]:
    """Set a new password; every session and token of the account dies (committed)."""
    lifecycle.check_new_password(new_password)
    user = _authorised(ctx, session, access, user_id, proof)
    now = ctx.clock.now()
    user.password_hash = ctx.passwords.hash(new_password)
    killed = lifecycle.revoke_tokens(session, user.id, now)
    details = {"user": user.id, "tokens_revoked": killed, "by": "organisation owner"}
    record(
        session,
        "user.password_reset",
        access.principal.actor,
        details,
        org_id=access.org.id,
        at=now,
    )
    session.commit()
    return user, killed


def set_disabled(  # noqa: PLR0917 - the request's parts
    ctx: AppContext,
    session: Session,
    access: OrgAccess,
    user_id: str,
    disabled: bool,
    proof: Proof,
) -> tuple[User, int]:
    """Disable (every session and token dies) or enable the account (committed)."""
    user = _authorised(ctx, session, access, user_id, proof)
    now = ctx.clock.now()
    user.disabled = disabled
    killed = lifecycle.revoke_tokens(session, user.id, now) if disabled else 0
    event = "user.disable" if disabled else "user.enable"
    details = {"user": user.id, "tokens_revoked": killed, "by": "organisation owner"}
    record(session, event, access.principal.actor, details, org_id=access.org.id, at=now)
    session.commit()
    return user, killed
