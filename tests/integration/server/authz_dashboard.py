"""Authorization-matrix rows of the web dashboard (server/ui/routes.py, ADR 0035).

Every principal's credential is put where a browser keeps it: its token in the
``bastion_session`` cookie, and on a form POST the CSRF token of that session in the
form (so the row tests the role check, not the CSRF check; test_dashboard.py has the
CSRF table). The dashboard accepts only a user *login session* in the cookie: every
other credential (no cookie, expired or revoked token, a personal API token, a device
or provisioning key) is sent to sign in (303) on a page and refused (401) on a POST.
A signed-in user gets what the matching API route gives (404 for a fleet of another
organisation, 403 for a weaker role).
"""

from __future__ import annotations

import re
from typing import Any

from authz_agent import _command, _device
from authz_console import NEW_PASSWORD, _fresh, _other_session
from authz_devices import _fresh_key, _victim
from server_authz import _NOT_USER, OK, PASSWORD, PRINCIPALS, USERS, Row, Setup, World
from server_authz import LEVELS as CORE_LEVELS

from bastion.server.ui.security import LOGIN_CSRF_COOKIE, SESSION_COOKIE, csrf_token

_REFUSED = (*_NOT_USER, "read_token")


def _ui(level: str, refused: int) -> dict[str, int | str]:
    table = dict(CORE_LEVELS[level])
    for name in _REFUSED:
        table[name] = refused
    return table


#: picked up by server_authz.all_levels()
LEVELS: dict[str, dict[str, int | str]] = {
    "ui_public": {p: OK for p in PRINCIPALS},
    "ui_page_session": _ui("session", 303),
    "ui_page_viewer": _ui("viewer", 303),
    "ui_page_admin": _ui("admin", 303),
    "ui_page_org_member": _ui("org_member", 303),
    "ui_page_org_owner": _ui("org_owner", 303),
    "ui_post_session": _ui("session", 401),
    "ui_post_operator": _ui("operator", 401),
    "ui_post_admin": _ui("admin", 401),
    "ui_post_org_owner": _ui("org_owner", 401),
}


def _as_browser(post: bool, setup: Setup | None = None) -> Setup:
    """Move the principal's token into the session cookie (and a POST's CSRF field)."""

    def run(world: World, who: str) -> dict[str, Any]:
        extra = setup(world, who) if setup else {}
        world.client.cookies.clear()  # nothing left over from another row's sign-in
        headers = extra.pop("headers", world.headers[who])
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        extra["headers"] = {"Cookie": f"{SESSION_COOKIE}={token}"} if token else {}
        if post:
            extra["data"] = {"csrf": csrf_token(token), **extra.pop("data", {})}
        return extra

    return run


def _fresh_login(world: World, who: str) -> dict[str, Any]:
    """Signing out revokes the session: give users one of their own to lose."""
    return {"headers": world.login(who)} if who in USERS else {}


def _totp_started(world: World, who: str) -> dict[str, Any]:
    """A fresh session that began TOTP enrolment, and the code to confirm it with."""
    from bastion.server.auth import totp

    if who not in USERS:
        return {"data": {"code": "123456"}}
    headers = world.login(who)
    secret = world.client.post("/v1/me/totp", headers=headers).json()["secret"]
    step = int(world.ctx.clock.now().timestamp()) // 30
    return {"headers": headers, "data": {"code": totp.code_at(secret, step)}}


def _password_change(world: World, who: str) -> dict[str, Any]:
    """A fresh session of its own (the change signs out the others) and the form."""
    extra = _fresh_login(world, who)
    form = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    return {**extra, "data": {**form, "new_password_again": NEW_PASSWORD}}


def _totp_enabled(world: World, who: str) -> dict[str, Any]:
    """A user with TOTP on, a session fresh with both factors, and a current code."""
    from bastion.server.auth import totp

    if who not in USERS:
        return {"data": {"code": "123456"}}

    def code() -> str:
        world.ctx.clock.advance(30)  # each code is accepted once: a new step for each
        return totp.code_at(secret, int(world.ctx.clock.now().timestamp()) // 30)

    enrol = world.login(who)
    secret = world.client.post("/v1/me/totp", headers=enrol).json()["secret"]
    confirmed = world.client.post("/v1/me/totp/confirm", headers=enrol, json={"code": code()})
    assert confirmed.status_code == 200, confirmed.text
    login = world.client.post(
        "/v1/auth/login", json={"email": world.emails[who], "password": PASSWORD, "totp": code()}
    )
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['token']}"}
    return {"headers": headers, "data": {"code": code()}}


def _command_form(world: World, who: str) -> dict[str, Any]:
    return {**_device(world, who), "data": {"kind": "attest"}}


def _ui_rollout_start(world: World, who: str) -> dict[str, Any]:
    """The start form for the world's release; an operator's needs no rollout running."""
    from authz_releases import _start_body

    _start_body(world, who)  # aborts the active rollout for those who may start one
    return {"data": {"release_id": world.vars["release_id"], "canary_percent": "0"}}


def _ui_rollout_in(state: str) -> Any:
    from authz_releases import _rollout_in

    return _rollout_in(state)


def _own_token(world: World, who: str) -> dict[str, Any]:
    if who not in USERS:
        return {"token": "0" * 32}
    token = world.post(who, "/v1/me/tokens", {"name": world.unique("t"), "scopes": ["read"]})
    return {"token": token["id"]}


def _invited(world: World, who: str) -> dict[str, Any]:
    """A fresh organisation (of ``outsider``, or of org_owner for outsider) inviting ``who``
    (non-users: the target user, whose invitation they cannot answer)."""
    invitee = who if who in USERS else "target"
    inviter = "org_owner" if invitee == "outsider" else "outsider"
    org = world.post(inviter, "/v1/orgs", {"name": world.unique("ui-inv")})
    invitation = world.post(
        inviter, f"/v1/orgs/{org['id']}/invitations", {"email": world.emails[invitee]}
    )
    return {"invitation": invitation["id"]}


def _managed_member(world: World, _who: str) -> dict[str, Any]:
    """A fresh plain member of organisation A (an account its owner may administer)."""
    name = world.unique("managed")
    world.make_user(name)
    world.add_member("org_owner", world.emails[name])
    return {"user": world.users[name], "email": world.emails[name]}


def _org_rules(world: World, who: str) -> dict[str, Any]:
    """The sign-in rules form, unchanged rules (no box ticked: organisation A requires
    none), with the caller's password and a current TOTP code."""
    proof = _totp_enabled(world, who)
    out: dict[str, Any] = {"data": {"password": PASSWORD, "totp": proof["data"]["code"]}}
    if "headers" in proof:
        out["headers"] = proof["headers"]
    return out


def _org_admin(action: str) -> Setup:
    """A fresh member to act on, and the form with the caller's password and a current
    TOTP code (TOTP is enrolled for every user principal, so only the role decides)."""

    def run(world: World, who: str) -> dict[str, Any]:
        extra = _managed_member(world, who)
        if action == "enable":  # disabled first, by the server's operator
            from bastion.server.users import lifecycle

            with world.ctx.db.session() as session:
                lifecycle.set_disabled(world.ctx, session, extra["email"], True, "cli:test")
        proof = _totp_enabled(world, who)
        data: dict[str, str] = {"password": PASSWORD, "totp": proof["data"]["code"]}
        if action == "reset-password":
            data |= {"new_password": NEW_PASSWORD, "new_password_again": NEW_PASSWORD}
        out = {**extra, "data": data}
        if "headers" in proof:
            out["headers"] = proof["headers"]
        return out

    return run


def _invitee(world: World, _who: str) -> dict[str, Any]:
    return {"data": {"email": f"{world.unique('ui-invitee')}@example.org"}}


def _pending_invitation(world: World, _who: str) -> dict[str, Any]:
    email = f"{world.unique('ui-pending')}@example.org"
    invitation = world.post(
        "org_owner", f"/v1/orgs/{world.vars['org']}/invitations", {"email": email}
    )
    return {"invitation": invitation["id"]}


def _signin_form(world: World, _who: str) -> dict[str, Any]:
    """A sign-in as ``target`` with the form's double-submit cookie and token."""
    world.client.cookies.clear()
    page = world.client.get("/ui/signin")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    world.client.cookies.clear()
    return {
        "headers": {"Cookie": f"{LOGIN_CSRF_COOKIE}={found.group(1)}"},
        "data": {"email": world.emails["target"], "password": PASSWORD, "csrf": found.group(1)},
    }


ROWS = [
    Row("GET", "/", "ui_public", 303),
    Row("GET", "/ui/", "ui_public", 303, setup=_as_browser(False)),
    Row("GET", "/ui/signin", "ui_public"),
    Row("POST", "/ui/signin", "ui_public", 303, setup=_signin_form),
    Row("GET", "/ui/static/dashboard.css", "ui_public"),
    # the matrix app has no OpenID provider: the OIDC sign-in routes answer 404 to all
    Row("GET", "/ui/oidc/login", "ui_public", 404),
    Row("GET", "/ui/oidc/callback", "ui_public", 404),
    Row(
        "POST",
        "/ui/oidc/second-factor",
        "ui_public",
        404,
        setup=lambda _w, _p: {"data": {"ticket": "t"}},
    ),
    Row("POST", "/ui/signout", "ui_post_session", 303, setup=_as_browser(True, _fresh_login)),
    Row("GET", "/ui/fleets", "ui_page_session", setup=_as_browser(False)),
    Row("GET", "/ui/fleets/{fleet}", "ui_page_viewer", setup=_as_browser(False)),
    Row("GET", "/ui/fleets/{fleet}/members", "ui_page_viewer", setup=_as_browser(False)),
    Row(
        "GET",
        "/ui/fleets/{fleet}/devices/{device}",
        "ui_page_viewer",
        setup=_as_browser(False, lambda w, _p: {"device": w.vars["device"]}),
    ),
    Row(
        "POST",
        "/ui/fleets/{fleet}/devices/{device}/revoke",
        "ui_post_operator",
        303,
        setup=_as_browser(True, _victim("ui_post_operator")),
    ),
    Row("GET", "/ui/fleets/{fleet}/provisioning-keys", "ui_page_admin", setup=_as_browser(False)),
    Row(
        "POST",
        "/ui/fleets/{fleet}/provisioning-keys",
        "ui_post_admin",
        201,
        setup=_as_browser(True, lambda _w, _p: {"data": {"name": "ui-key"}}),
    ),
    Row(
        "POST",
        "/ui/fleets/{fleet}/devices/{device}/commands",
        "ui_post_operator",
        303,
        setup=_as_browser(True, _command_form),
    ),
    Row(
        "POST",
        "/ui/fleets/{fleet}/devices/{device}/commands/{command}/cancel",
        "ui_post_operator",
        303,
        setup=_as_browser(True, _command),
    ),
    Row(
        "POST",
        "/ui/fleets/{fleet}/provisioning-keys/{pkey}/revoke",
        "ui_post_admin",
        303,
        setup=_as_browser(True, _fresh_key),
    ),
    Row("GET", "/ui/fleets/{fleet}/releases", "ui_page_viewer", setup=_as_browser(False)),
    Row("GET", "/ui/fleets/{fleet}/rollouts", "ui_page_viewer", setup=_as_browser(False)),
    Row(
        "GET",
        "/ui/fleets/{fleet}/rollouts/{rollout_id}",
        "ui_page_viewer",
        setup=_as_browser(False),
    ),
    Row(
        "POST",
        "/ui/fleets/{fleet}/rollouts",
        "ui_post_operator",
        303,
        setup=_as_browser(True, _ui_rollout_start),
    ),
    Row(
        "POST",
        "/ui/fleets/{fleet}/rollouts/{rollout_id}/pause",
        "ui_post_operator",
        303,
        setup=_as_browser(True, _ui_rollout_in("running")),
    ),
    Row(
        "POST",
        "/ui/fleets/{fleet}/rollouts/{rollout_id}/resume",
        "ui_post_operator",
        303,
        setup=_as_browser(True, _ui_rollout_in("paused")),
    ),
    Row(
        "POST",
        "/ui/fleets/{fleet}/rollouts/{rollout_id}/abort",
        "ui_post_operator",
        303,
        setup=_as_browser(True, _ui_rollout_in("running")),
    ),
    Row("GET", "/ui/orgs/{org}/members", "ui_page_org_member", setup=_as_browser(False)),
    Row("GET", "/ui/orgs/{org}/audit", "ui_page_org_owner", setup=_as_browser(False)),
    Row(
        "GET",
        "/ui/orgs/{org}/users/{user}",
        "ui_page_org_owner",
        setup=_as_browser(False, _managed_member),
    ),
    *(
        Row(
            "POST",
            f"/ui/orgs/{{org}}/users/{{user}}/{action}",
            "ui_post_org_owner",
            setup=_as_browser(True, _org_admin(action)),
            fresh=True,
        )
        for action in ("reset-password", "disable", "enable")
    ),
    Row(
        "POST",
        "/ui/orgs/{org}/security",
        "ui_post_org_owner",
        303,
        setup=_as_browser(True, _org_rules),
        fresh=True,
    ),
    Row("GET", "/ui/account", "ui_page_session", setup=_as_browser(False)),
    Row(
        "POST",
        "/ui/account/sessions/{session_id}/revoke",
        "ui_post_session",
        303,
        setup=_as_browser(True, _other_session),
    ),
    Row(
        "POST",
        "/ui/account/sessions/revoke-others",
        "ui_post_session",
        setup=_as_browser(True, _fresh),
        fresh=True,
    ),
    Row(
        "POST",
        "/ui/orgs/{org}/invitations",
        "ui_post_org_owner",
        303,
        setup=_as_browser(True, _invitee),
    ),
    Row(
        "POST",
        "/ui/orgs/{org}/invitations/{invitation}/revoke",
        "ui_post_org_owner",
        303,
        setup=_as_browser(True, _pending_invitation),
    ),
    Row(
        "POST",
        "/ui/account/reauth",
        "ui_post_session",
        303,
        setup=_as_browser(True, lambda _w, _p: {"data": {"password": PASSWORD}}),
    ),
    Row(
        "POST",
        "/ui/account/totp",
        "ui_post_session",
        setup=_as_browser(True, _fresh_login),
        fresh=True,
    ),
    Row(
        "POST",
        "/ui/account/totp/confirm",
        "ui_post_session",
        setup=_as_browser(True, _totp_started),
        fresh=True,
    ),
    Row(
        "POST",
        "/ui/account/totp/disable",
        "ui_post_session",
        setup=_as_browser(True, _totp_enabled),
        fresh=True,
    ),
    Row(
        "POST",
        "/ui/account/password",
        "ui_post_session",
        setup=_as_browser(True, _password_change),
        fresh=True,
    ),
    Row(
        "POST",
        "/ui/account/tokens",
        "ui_post_session",
        201,
        setup=_as_browser(True, lambda _w, _p: {"data": {"name": "ui-t", "scopes": "read"}}),
    ),
    Row(
        "POST",
        "/ui/account/tokens/{token}/revoke",
        "ui_post_session",
        303,
        setup=_as_browser(True, _own_token),
    ),
    Row(
        "POST",
        "/ui/account/invitations/{invitation}/accept",
        "ui_post_session",
        303,
        setup=_as_browser(True, _invited),
    ),
    Row(
        "POST",
        "/ui/account/invitations/{invitation}/decline",
        "ui_post_session",
        303,
        setup=_as_browser(True, _invited),
    ),
]
