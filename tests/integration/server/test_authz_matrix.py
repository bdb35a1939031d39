"""The authorization matrix: every route x every principal against the expected status.

Rows for this core's routes are below; other features add theirs in ``authz_*.py``
(see server_authz.py). ``test_every_route_has_a_row`` fails when a route has no row, so
the matrix cannot silently fall behind the API.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from fastapi import routing as fastapi_routing
from fastapi.routing import APIRoute
from server_authz import (
    OK,
    PASSWORD,
    PRINCIPALS,
    USERS,
    Row,
    World,
    all_levels,
    all_rows,
    build_world,
)

from bastion.server.auth import totp


def _fresh_session(world: World, who: str) -> dict[str, Any]:
    return {"headers": world.login(who)} if who in USERS else {}


def _own_token(world: World, who: str) -> dict[str, Any]:
    if who not in USERS:
        return {"token": "0" * 32}
    token = world.post(who, "/v1/me/tokens", {"name": world.unique("t"), "scopes": ["read"]})
    return {"token": token["id"]}


def _totp_started(world: World, who: str) -> dict[str, Any]:
    if who not in USERS:
        return {"body": {"code": "123456"}}
    headers = world.login(who)
    secret = world.client.post("/v1/me/totp", headers=headers).json()["secret"]
    step = int(world.ctx.clock.now().timestamp()) // 30
    return {"headers": headers, "body": {"code": totp.code_at(secret, step)}}


def _totp_enabled(world: World, who: str) -> dict[str, Any]:
    if who not in USERS:
        return {"body": {"code": "123456"}}
    started = _totp_started(world, who)
    confirm = world.client.post(
        "/v1/me/totp/confirm", headers=started["headers"], json=started["body"]
    )
    assert confirm.status_code == 200, confirm.text
    # disabling needs a session re-authenticated with the (new) second factor
    reauth = world.client.post(
        "/v1/auth/reauth",
        headers=started["headers"],
        json={"password": PASSWORD, "recovery_code": confirm.json()["recovery_codes"][0]},
    )
    assert reauth.status_code == 200, reauth.text
    secret_step = int(world.ctx.clock.now().timestamp()) // 30
    world.ctx.clock.advance(30)
    from bastion.server.users.models import User

    with world.ctx.db.session(write=False) as session:
        sealed = session.get(User, world.users[who]).totp_secret
    secret = world.ctx.secret_box.open(sealed, f"totp:{world.users[who]}")
    return {"headers": started["headers"], "body": {"code": totp.code_at(secret, secret_step + 1)}}


def _unique_org(world: World, _who: str) -> dict[str, Any]:
    return {"body": {"name": world.unique("org")}}


def _unique_fleet(world: World, _who: str) -> dict[str, Any]:
    return {"body": {"name": world.unique("fleet")}}


def _new_org_member(world: World, _who: str) -> dict[str, Any]:
    name = world.unique("member")
    world.make_user(name)
    world.add_member("org_owner", world.emails[name])
    return {"user": world.users[name]}


def _new_fleet_member(world: World, _who: str) -> dict[str, Any]:
    name = world.unique("member")
    world.make_user(name)
    world.add_member("org_owner", world.emails[name], "viewer")
    return {"user": world.users[name]}


def _new_fleet(world: World, _who: str) -> dict[str, Any]:
    fleet = world.post(
        "org_owner", f"/v1/orgs/{world.vars['org']}/fleets", {"name": world.unique("f")}
    )
    for role in ("owner", "admin", "operator", "viewer"):
        world.put(
            "org_owner",
            f"/v1/fleets/{fleet['id']}/members",
            {"email": world.emails[role], "role": role},
        )
    return {"fleet": fleet["id"]}


def _new_env(world: World, _who: str) -> dict[str, Any]:
    name = world.unique("VAR").replace("-", "_")
    world.put("org_owner", f"/v1/fleets/{world.vars['fleet']}/env/{name}", {"value": "v"})
    return {"name": name}


def _new_invitation(world: World, _who: str) -> dict[str, Any]:
    email = f"{world.unique('invitee')}@example.org"
    invitation = world.post(
        "org_owner", f"/v1/orgs/{world.vars['org']}/invitations", {"email": email}
    )
    return {"invitation": invitation["id"]}


def _invitation_for(world: World, who: str) -> dict[str, Any]:
    """A fresh organisation inviting ``who`` (the target for non-users)."""
    invitee = who if who in USERS else "target"
    inviter = "outsider" if invitee != "outsider" else "org_owner"
    org = world.post(inviter, "/v1/orgs", {"name": world.unique("inv")})
    invitation = world.post(
        inviter, f"/v1/orgs/{org['id']}/invitations", {"email": world.emails[invitee]}
    )
    return {"invitation": invitation["id"], "org": org["id"]}


def _member_of_fresh_org(world: World, who: str) -> dict[str, Any]:
    """``who`` a plain member of a fresh organisation (non-users: organisation A)."""
    if who not in USERS:
        return {"org": world.vars["org"]}
    made = _invitation_for(world, who)
    world.accept(world.emails[who], made["invitation"])
    return {"org": made["org"]}


def _login_body(world: World, _who: str) -> dict[str, Any]:
    return {"body": {"email": world.emails["target"], "password": PASSWORD}}


CORE_ROWS = [
    Row("GET", "/v1/health", "public"),
    Row("POST", "/v1/auth/login", "public", setup=_login_body),
    Row("POST", "/v1/auth/signup", "nobody", 201, {"email": "n@example.org", "password": "p" * 12}),
    Row("POST", "/v1/auth/logout", "user", 204, setup=_fresh_session, fresh=True),
    Row("GET", "/v1/me", "user"),
    Row("GET", "/v1/me/tokens", "session"),
    Row("POST", "/v1/me/tokens", "session", 201, {"name": "x", "scopes": ["read"]}),
    Row("DELETE", "/v1/me/tokens/{token}", "session", setup=_own_token),
    Row("POST", "/v1/me/totp", "session", setup=_fresh_session, fresh=True),
    Row("POST", "/v1/me/totp/confirm", "session", setup=_totp_started, fresh=True),
    Row("POST", "/v1/me/totp/disable", "session", 204, setup=_totp_enabled, fresh=True),
    Row("POST", "/v1/orgs", "user_admin_scope", 201, setup=_unique_org),
    Row("GET", "/v1/orgs", "user"),
    Row("GET", "/v1/orgs/{org}", "org_member"),
    Row("PATCH", "/v1/orgs/{org}", "org_owner", body={"require_2fa": False}),
    Row("GET", "/v1/orgs/{org}/members", "org_member"),
    Row(
        "PUT",
        "/v1/orgs/{org}/members",
        "org_owner",
        body=None,
        setup=lambda w, _p: {"body": {"email": w.emails["target"], "role": "member"}},
    ),
    Row("DELETE", "/v1/orgs/{org}/members/{user}", "org_owner", 204, setup=_new_org_member),
    Row(
        "POST",
        "/v1/orgs/{org}/invitations",
        "org_owner",
        201,
        setup=lambda w, _p: {"body": {"email": f"{w.unique('inv')}@example.org"}},
    ),
    Row("GET", "/v1/orgs/{org}/invitations", "org_owner"),
    Row(
        "DELETE",
        "/v1/orgs/{org}/invitations/{invitation}",
        "org_owner",
        204,
        setup=_new_invitation,
    ),
    Row("POST", "/v1/orgs/{org}/leave", "user_admin_scope", 204, setup=_member_of_fresh_org),
    Row("GET", "/v1/me/invitations", "user"),
    Row(
        "POST",
        "/v1/me/invitations/{invitation}/accept",
        "user_admin_scope",
        setup=_invitation_for,
    ),
    Row(
        "POST",
        "/v1/me/invitations/{invitation}/decline",
        "user_admin_scope",
        setup=_invitation_for,
    ),
    Row("GET", "/v1/orgs/{org}/fleets", "org_member"),
    Row("POST", "/v1/orgs/{org}/fleets", "org_owner", 201, setup=_unique_fleet),
    Row("GET", "/v1/orgs/{org}/audit", "org_owner"),
    Row("GET", "/v1/fleets", "user"),
    Row("GET", "/v1/fleets/{fleet}", "viewer"),
    Row("DELETE", "/v1/fleets/{fleet}", "owner", 204, setup=_new_fleet),
    Row("GET", "/v1/fleets/{fleet}/members", "viewer"),
    Row(
        "PUT",
        "/v1/fleets/{fleet}/members",
        "admin",
        setup=lambda w, _p: {"body": {"email": w.emails["target"], "role": "viewer"}},
    ),
    Row("DELETE", "/v1/fleets/{fleet}/members/{user}", "admin", 204, setup=_new_fleet_member),
    Row("GET", "/v1/fleets/{fleet}/config", "viewer"),
    Row("PUT", "/v1/fleets/{fleet}/config", "operator", body={"config": {"a": 1}}),
    Row("GET", "/v1/fleets/{fleet}/env", "viewer"),
    Row(
        "PUT",
        "/v1/fleets/{fleet}/env/{name}",
        "operator",
        body={"value": "x"},
        setup=lambda _w, _p: {"name": "NEW_VAR"},
    ),
    Row("DELETE", "/v1/fleets/{fleet}/env/{name}", "operator", 204, setup=_new_env),
]

ROWS = all_rows(CORE_ROWS)


@pytest.fixture(scope="module")
def shared_world(matrix_client) -> World:
    """One world per backend for the rows that do not change callers' credentials."""
    return build_world(matrix_client)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_matrix(matrix_client, shared_world: World, row: Row) -> None:
    client = matrix_client
    world = build_world(client, tag=f"-{secrets.token_hex(3)}") if row.fresh else shared_world
    expect = all_levels()[row.level]
    failures = []
    missing = [name for name in PRINCIPALS if name not in world.headers]
    assert not missing, (
        f"principals missing from the world (a feature failed to add them): {missing}"
    )
    for name in PRINCIPALS:
        extra = row.setup(world, name) if row.setup else {}
        headers = extra.pop("headers", world.headers[name])
        body = extra.pop("body", row.body)
        form = extra.pop("data", None)  # a dashboard form (authz_dashboard.py)
        content = extra.pop("content", None)  # a raw body (a bundle upload) instead of JSON
        path = row.path.format(**{**world.vars, **extra})
        if content is not None:
            response = client.request(
                row.method, path, headers=headers, content=content, follow_redirects=False
            )
        else:
            response = client.request(
                row.method,
                path,
                headers=headers,
                json=body if form is None else None,
                data=form,
                follow_redirects=False,
            )
        want = row.ok if expect[name] == OK else expect[name]
        if response.status_code != want:
            failures.append(
                f"{name}: expected {want}, got {response.status_code} {response.text[:120]}"
            )
        if 200 <= response.status_code < 300 and expect[name] != OK:
            failures.append(f"{name}: UNEXPECTED 2xx")
    assert not failures, f"{row.id}:\n  " + "\n  ".join(failures)


def test_every_route_has_a_row(app) -> None:
    # FastAPI >= 0.12x keeps included routers nested (app.routes holds no APIRoute):
    # walk them; older versions copied every route into app.routes
    walk = getattr(fastapi_routing, "iter_route_contexts", None)
    found = (
        [(c.path, c.original_route) for c in walk(app.routes)]
        if walk is not None
        else [(getattr(r, "path", None), r) for r in app.routes]
    )
    routes = {
        (method, path)
        for path, route in found
        if isinstance(route, APIRoute)
        and path is not None
        and (path.startswith(("/v1/", "/ui/")) or path == "/")
        for method in route.methods
    }
    assert len(routes) > 50, f"found only {len(routes)} routes: the walk is broken"
    covered = set()
    for row in ROWS:
        template = row.path
        for var, param in (
            ("{org}", "{org_id}"),
            ("{fleet}", "{fleet_id}"),
            ("{user}", "{user_id}"),
            ("{token}", "{token_id}"),
            ("{device}", "{device_id}"),
            ("{pkey}", "{key_id}"),
            ("{invitation}", "{invitation_id}"),
            ("{ekca}", "{ca_id}"),
            ("{ek}", "{ek_sha256}"),
            ("{golden}", "{golden_id}"),
            ("{verdict}", "{verdict_id}"),
            ("{command}", "{command_id}"),
            ("{webhook}", "{webhook_id}"),
            ("{hook}", "{webhook_id}"),
        ):
            template = template.replace(var, param)
        covered.add((row.method, template))
    missing = sorted(routes - covered)
    assert not missing, f"routes without a matrix row: {missing}"


def test_levels_cover_every_principal() -> None:
    for level, table in all_levels().items():
        assert set(PRINCIPALS) <= set(table), f"level {level} misses {set(PRINCIPALS) - set(table)}"
