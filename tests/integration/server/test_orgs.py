"""Organisations and fleets: roles, 2FA enforcement, owners, config and variables."""

from __future__ import annotations

import pytest

from bastion.server.auth import totp


@pytest.fixture
def org_world(api):
    boss = api.user_and_login("boss@example.org")
    org = api.client.post("/v1/orgs", headers=boss, json={"name": "acme"}).json()["id"]
    fleet = api.client.post(f"/v1/orgs/{org}/fleets", headers=boss, json={"name": "pumps"}).json()[
        "id"
    ]
    return api, boss, org, fleet


def join(api, boss, org, email):
    """Invite ``email`` as ``boss`` and accept as its holder; the holder's session."""
    invitation = api.client.post(f"/v1/orgs/{org}/invitations", headers=boss, json={"email": email})
    assert invitation.status_code == 201, invitation.text
    headers = api.login(email)
    accepted = api.client.post(
        f"/v1/me/invitations/{invitation.json()['id']}/accept", headers=headers
    )
    assert accepted.status_code == 200, accepted.text
    return headers


def add(api, boss, org, fleet, email, role):
    api.user(email)
    join(api, boss, org, email)
    if role:
        r = api.client.put(
            f"/v1/fleets/{fleet}/members", headers=boss, json={"email": email, "role": role}
        )
        assert r.status_code == 200, r.text
    return api.login(email)


def test_fleet_listing_shows_roles(org_world) -> None:
    api, boss, org, fleet = org_world
    viewer = add(api, boss, org, fleet, "v@example.org", "viewer")
    assert [f["role"] for f in api.client.get("/v1/fleets", headers=boss).json()] == ["owner"]
    assert [f["role"] for f in api.client.get("/v1/fleets", headers=viewer).json()] == ["viewer"]
    member_only = add(api, boss, org, fleet, "m@example.org", None)
    assert api.client.get("/v1/fleets", headers=member_only).json() == []
    assert api.client.get(f"/v1/fleets/{fleet}", headers=member_only).status_code == 404


def test_admin_cannot_grant_or_remove_owner(org_world) -> None:
    api, boss, org, fleet = org_world
    admin = add(api, boss, org, fleet, "a@example.org", "admin")
    add(api, boss, org, fleet, "o@example.org", "owner")
    api.user("new@example.org")
    join(api, boss, org, "new@example.org")
    grant = api.client.put(
        f"/v1/fleets/{fleet}/members",
        headers=admin,
        json={"email": "new@example.org", "role": "owner"},
    )
    assert grant.status_code == 403
    demote = api.client.put(
        f"/v1/fleets/{fleet}/members",
        headers=admin,
        json={"email": "o@example.org", "role": "viewer"},
    )
    assert demote.status_code == 403
    ok = api.client.put(
        f"/v1/fleets/{fleet}/members",
        headers=admin,
        json={"email": "new@example.org", "role": "operator"},
    )
    assert ok.status_code == 200


def test_fleet_role_needs_org_membership(org_world) -> None:
    api, boss, org, fleet = org_world  # noqa: RUF059
    api.user("stranger@example.org")
    response = api.client.put(
        f"/v1/fleets/{fleet}/members",
        headers=boss,
        json={"email": "stranger@example.org", "role": "viewer"},
    )
    assert response.status_code == 404


def test_last_owner_cannot_leave(org_world) -> None:
    api, boss, org, fleet = org_world  # noqa: RUF059
    me = api.client.get("/v1/me", headers=boss).json()["id"]
    assert api.client.delete(f"/v1/orgs/{org}/members/{me}", headers=boss).status_code == 409


def test_org_2fa_enforcement(org_world, clock) -> None:
    api, boss, org, fleet = org_world
    viewer = add(api, boss, org, fleet, "v@example.org", "viewer")
    # the owner must have 2FA before enforcing it
    assert (
        api.client.patch(f"/v1/orgs/{org}", headers=boss, json={"require_2fa": True}).status_code
        == 409
    )
    secret = api.client.post("/v1/me/totp", headers=boss).json()["secret"]
    step = int(clock.now().timestamp()) // 30
    api.client.post("/v1/me/totp/confirm", headers=boss, json={"code": totp.code_at(secret, step)})
    clock.advance(30)
    boss2 = api.login("boss@example.org", totp=totp.code_at(secret, step + 1))
    assert (
        api.client.patch(f"/v1/orgs/{org}", headers=boss2, json={"require_2fa": True}).status_code
        == 200
    )
    # sessions without a second factor are now refused in this organisation
    refused = api.client.get(f"/v1/fleets/{fleet}", headers=viewer)
    assert refused.status_code == 403
    assert "two-factor" in refused.json()["detail"]
    assert api.client.get(f"/v1/fleets/{fleet}", headers=boss).status_code == 403
    assert api.client.get(f"/v1/fleets/{fleet}", headers=boss2).status_code == 200
    assert api.client.get("/v1/fleets", headers=viewer).json() == []
    # turning TOTP off downgrades the sessions that had passed it
    clock.advance(30)
    off = api.client.post(
        "/v1/me/totp/disable", headers=boss2, json={"code": totp.code_at(secret, step + 2)}
    )
    assert off.status_code == 204, off.text
    assert api.client.get(f"/v1/fleets/{fleet}", headers=boss2).status_code == 403


def test_config_and_env(org_world) -> None:
    api, boss, org, fleet = org_world
    op = add(api, boss, org, fleet, "op@example.org", "operator")
    assert (
        api.client.put(
            f"/v1/fleets/{fleet}/config", headers=op, json={"config": {"x": [1, 2]}}
        ).status_code
        == 200
    )
    assert api.client.get(f"/v1/fleets/{fleet}/config", headers=op).json() == {
        "config": {"x": [1, 2]}
    }
    assert (
        api.client.put(
            f"/v1/fleets/{fleet}/env/LOG_LEVEL", headers=op, json={"value": "debug"}
        ).status_code
        == 200
    )
    assert api.client.get(f"/v1/fleets/{fleet}/env", headers=op).json() == [
        {"name": "LOG_LEVEL", "value": "debug"}
    ]
    assert api.client.delete(f"/v1/fleets/{fleet}/env/LOG_LEVEL", headers=op).status_code == 204
    assert api.client.delete(f"/v1/fleets/{fleet}/env/LOG_LEVEL", headers=op).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("env/1BAD", {"value": "x"}, 422),
        ("env/GOOD", {"value": "x" * 9000}, 422),
        ("env/GOOD", {"value": "a\x00b"}, 400),
        ("env/GOOD", {"value": 5}, 422),
        ("env/GOOD", {"value": "x", "extra": 1}, 422),
        ("config", {"config": {"k": "x" * 70000}}, 413),
        ("config", {"config": [1, 2]}, 422),
        ("config", {}, 422),
    ],
)
def test_bad_fleet_input(org_world, path, body, status) -> None:
    api, boss, org, fleet = org_world  # noqa: RUF059
    response = api.client.put(f"/v1/fleets/{fleet}/{path}", headers=boss, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] in {"invalid", "bad_request", "too_large"}


@pytest.mark.parametrize("name", ["UPPER", "-lead", "a" * 64, "sp ace", ""])
def test_bad_names(org_world, name) -> None:
    api, boss, org, fleet = org_world  # noqa: RUF059
    assert api.client.post("/v1/orgs", headers=boss, json={"name": name}).status_code == 422


def test_duplicate_names_conflict(org_world) -> None:
    api, boss, org, fleet = org_world  # noqa: RUF059
    assert api.client.post("/v1/orgs", headers=boss, json={"name": "acme"}).status_code == 409
    assert (
        api.client.post(f"/v1/orgs/{org}/fleets", headers=boss, json={"name": "pumps"}).status_code
        == 409
    )


def test_org_audit_lists_only_that_org(org_world) -> None:
    api, boss, org, fleet = org_world  # noqa: RUF059
    events = [e["event"] for e in api.client.get(f"/v1/orgs/{org}/audit", headers=boss).json()]
    assert events == ["org.create", "fleet.create"]


def _nested(depth: int) -> bytes:
    return b'{"config": {"k": ' + b"[" * depth + b"1" + b"]" * depth + b"}}"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (_nested(300), 413),  # nested 300 deep: refused before the handler runs
        (_nested(100_000), 413),  # would be a RecursionError in the stdlib parser
        (b'{"config": {"k": 1, "k": 2}}', 422),  # duplicate key
        (b'{"config": {"k": NaN}}', 422),
        (b'{"config": {"k": Infinity}}', 422),
        (b'{"config": {"k": -Infinity}}', 422),
        (b'{"config": {"k": 1e999}}', 422),
        (b'{"config": {"k": "\\ud800"}}', 422),  # lone surrogate escape
        (b'{"config": {"k": "\xff"}}', 422),  # not UTF-8
        (b'\xef\xbb\xbf{"config": {}}', 422),  # byte-order mark
        (b'{"config": {}, "config": {"k": 1}}', 422),
    ],
)
def test_strict_json_fleet_config_is_refused_and_not_stored(org_world, raw, status) -> None:
    api, boss, org, fleet = org_world  # noqa: RUF059
    api.client.put(f"/v1/fleets/{fleet}/config", headers=boss, json={"config": {"keep": 1}})
    response = api.client.put(
        f"/v1/fleets/{fleet}/config",
        headers={**boss, "content-type": "application/json"},
        content=raw,
    )
    assert response.status_code == status, response.text
    assert response.json()["error"] in {"invalid", "too_large"}
    stored = api.client.get(f"/v1/fleets/{fleet}/config", headers=boss).json()
    assert stored == {"config": {"keep": 1}}


@pytest.mark.parametrize("ctype", ["application/json", "application/merge-patch+json", None])
def test_strict_json_applies_to_every_json_content_type(org_world, ctype) -> None:
    api, boss, org, fleet = org_world  # noqa: RUF059
    headers = dict(boss)
    if ctype:
        headers["content-type"] = ctype
    response = api.client.put(
        f"/v1/fleets/{fleet}/config", headers=headers, content=b'{"config": {"a": 1, "a": 2}}'
    )
    assert response.status_code == 422, response.text
    assert "duplicate JSON key" in response.json()["detail"]
