"""An organisation owner's forms: invitations, and the user page where they reset a
member's password, disable or enable the account (ADR 0020 and ADR 0035, amendments of
2026-12-06).

======  =====================================================  ======================
method  path (under ``/ui``)                                    who
======  =====================================================  ======================
GET     /orgs/{org_id}/users/{user_id}                          organisation owner
POST    /orgs/{org_id}/users/{user_id}/reset-password           organisation owner +
POST    /orgs/{org_id}/users/{user_id}/disable                  password and second
POST    /orgs/{org_id}/users/{user_id}/enable                   factor in the form
POST    /orgs/{org_id}/invitations                              organisation owner
POST    /orgs/{org_id}/invitations/{invitation_id}/revoke       organisation owner
POST    /orgs/{org_id}/security                                 organisation owner +
                                                                password (and second
                                                                factor when enrolled)
======  =====================================================  ======================

The security form sets the organisation's sign-in rules (``require_2fa``, and
``require_oidc`` where the server has an OpenID provider) through
:func:`bastion.server.orgs.service.update_org`, as ``PATCH /v1/orgs/{org}`` does (its
refusals: requiring 2FA without having signed in with it, OIDC without having signed
in through it; the ``org.update`` audit entry), after re-authenticating the owner with
the password and, when enrolled, the second factor given in the form: loosening a rule
is a security change.

Invitations call :func:`bastion.server.orgs.invitations.invite` and ``revoke`` after
the same owner check as ``POST /v1/orgs/{org}/invitations`` and
``DELETE /v1/orgs/{org}/invitations/{id}``; the invitee accepts on their account page.

Each POST checks, in order: session, origin and CSRF token (:data:`~.pages.Actor`),
organisation ownership (``org_access(..., OWNER)``), then
:mod:`bastion.server.users.admin` checks who the account is (wholly inside
organisations the caller owns, not an owner, not the caller), re-authenticates the
caller with password and TOTP (or a recovery code) given in the same form, and makes the
change with its audit entry. A reset or a disable ends every session and personal API
token of the account at once. No HTTP API route does this (the CLI's
``bastion server user ...`` works on the database).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from sqlalchemy.orm import Session
from starlette.responses import Response

from bastion import limits
from bastion.errors import FormatError
from bastion.server.auth.deps import Ctx, DbSession, ReadSession, client_address
from bastion.server.auth.rbac import OrgAccess, OrgRole, org_access
from bastion.server.context import AppContext
from bastion.server.orgs import invitations
from bastion.server.orgs import service as orgs_service
from bastion.server.ui import nav
from bastion.server.ui.pages import (
    Actor,
    OptionalField,
    PageRoute,
    Viewer,
    nav_links,
    render,
    see_other,
)
from bastion.server.ui.security import PageUser
from bastion.server.users import admin

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)
Password = Annotated[str, Form(min_length=1, max_length=limits.PASSWORD_MAX_LENGTH)]


def _page(
    request: Request,
    user: PageUser,
    session: Session,
    access: OrgAccess,
    user_id: str,
    *,
    notice: str | None = None,
) -> Response:
    found = admin.standing(session, access, user_id)
    values: dict[str, Any] = {
        "access": access,
        "target": found.user,
        "memberships": found.memberships,
        "refusal": found.refusal,
        "notice": notice,
        "password_min": limits.PASSWORD_MIN_LENGTH,
        "org_links": nav_links(
            request, nav.NavScope.ORG, params={"org_id": access.org.id}, org_role=access.role
        ),
    }
    return render(request, "org_user.html", values, user=user)


def _proof(
    request: Request, password: str, totp: str | None, recovery_code: str | None
) -> admin.Proof:
    return admin.Proof(
        password=password,
        totp=(totp or "").strip() or None,
        recovery_code=(recovery_code or "").strip() or None,
        client=client_address(request),
    )


@router.get("/orgs/{org_id}/users/{user_id}", name="ui.org_user")
def user_page(
    request: Request, org_id: str, user_id: str, user: Viewer, session: ReadSession
) -> Response:
    """A member's account: standing, memberships, and the owner's forms."""
    access = org_access(session, user.principal, org_id, OrgRole.OWNER)
    return _page(request, user, session, access, user_id)


@router.post("/orgs/{org_id}/users/{user_id}/reset-password", name="ui.org_user_reset")
def reset_password(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    org_id: str,
    user_id: str,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    new_password: Annotated[
        str, Form(min_length=limits.PASSWORD_MIN_LENGTH, max_length=limits.PASSWORD_MAX_LENGTH)
    ],
    new_password_again: Annotated[str, Form(max_length=limits.PASSWORD_MAX_LENGTH)],
    password: Password,
    totp: OptionalField = None,
    recovery_code: OptionalField = None,
) -> Response:
    """Give the account a new password; its sessions and tokens end."""
    access = org_access(session, user.principal, org_id, OrgRole.OWNER)
    if not hmac.compare_digest(new_password.encode(), new_password_again.encode()):
        raise FormatError("the new password and its repetition differ")
    proof = _proof(request, password, totp, recovery_code)
    target, killed = admin.reset_password(ctx, session, access, user_id, new_password, proof)
    notice = (
        f"New password set for {target.email}; {killed} session(s) and token(s) ended. "
        "Give them the password by another channel."
    )
    return _page(request, user, session, access, user_id, notice=notice)


def _set_disabled(  # noqa: PLR0917 - the request's parts
    request: Request,
    org_id: str,
    user_id: str,
    user: PageUser,
    session: Session,
    ctx: AppContext,
    disabled: bool,
    proof: admin.Proof,
) -> Response:
    access = org_access(session, user.principal, org_id, OrgRole.OWNER)
    target, killed = admin.set_disabled(ctx, session, access, user_id, disabled, proof)
    notice = (
        f"{target.email} is disabled; {killed} session(s) and token(s) ended."
        if disabled
        else f"{target.email} may sign in again (with a new login)."
    )
    return _page(request, user, session, access, user_id, notice=notice)


@router.post("/orgs/{org_id}/users/{user_id}/disable", name="ui.org_user_disable")
def disable(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    org_id: str,
    user_id: str,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    password: Password,
    totp: OptionalField = None,
    recovery_code: OptionalField = None,
) -> Response:
    """Disable the account: it cannot sign in, its sessions and tokens end."""
    proof = _proof(request, password, totp, recovery_code)
    return _set_disabled(request, org_id, user_id, user, session, ctx, True, proof)


@router.post("/orgs/{org_id}/users/{user_id}/enable", name="ui.org_user_enable")
def enable(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    org_id: str,
    user_id: str,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    password: Password,
    totp: OptionalField = None,
    recovery_code: OptionalField = None,
) -> Response:
    """Let a disabled account sign in again (no old credential comes back)."""
    proof = _proof(request, password, totp, recovery_code)
    return _set_disabled(request, org_id, user_id, user, session, ctx, False, proof)


# --- invitations ----------------------------------------------------------------------------


@router.post("/orgs/{org_id}/invitations", name="ui.org_invite")
def invite(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    org_id: str,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    email: Annotated[str, Form(min_length=3, max_length=254)],
    role: Annotated[OrgRole, Form()] = OrgRole.MEMBER,
    expires_in_days: Annotated[int, Form(ge=1, le=limits.INVITATION_TTL_DAYS_MAX)] = 7,
) -> Response:
    """Invite an e-mail address (owner, as ``POST /v1/orgs/{org}/invitations``)."""
    access = org_access(session, user.principal, org_id, OrgRole.OWNER)
    invitations.invite(ctx, session, access, email, role, expires_in_days=expires_in_days)
    return see_other(request, "ui.org_members", org_id=org_id)


@router.post("/orgs/{org_id}/invitations/{invitation_id}/revoke", name="ui.org_invitation_revoke")
def invitation_revoke(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request, org_id: str, invitation_id: str, user: Actor, session: DbSession, ctx: Ctx
) -> Response:
    """Withdraw a pending invitation (owner)."""
    access = org_access(session, user.principal, org_id, OrgRole.OWNER)
    invitations.revoke(ctx, session, access, invitation_id)
    return see_other(request, "ui.org_members", org_id=org_id)


# --- sign-in rules ---------------------------------------------------------------------------


@router.post("/orgs/{org_id}/security", name="ui.org_security")
def security(  # noqa: PLR0917 - FastAPI injects parameters by name
    request: Request,
    org_id: str,
    user: Actor,
    session: DbSession,
    ctx: Ctx,
    password: Password,
    require_2fa: OptionalField = None,
    require_oidc: OptionalField = None,
    totp: OptionalField = None,
    recovery_code: OptionalField = None,
) -> Response:
    """Set the organisation's sign-in rules (an unchecked box turns its rule off)."""
    access = org_access(session, user.principal, org_id, OrgRole.OWNER)
    _proof(request, password, totp, recovery_code).reauthenticate(ctx, session, access.principal)
    orgs_service.update_org(
        ctx,
        session,
        access,
        _checked(require_2fa),
        require_oidc=_checked(require_oidc) if ctx.oidc is not None else None,
    )
    return see_other(request, "ui.org_members", org_id=org_id)


def _checked(value: str | None) -> bool:
    """An HTML checkbox: ``on`` when ticked, absent when not; anything else is refused."""
    if value is None:
        return False
    if value != "on":
        raise FormatError(f"a checkbox sends 'on' or nothing, not {value[:20]!r}")
    return True
