"""An organisation owner resets a member's password, disables and enables the account from
the dashboard's user page (server/ui/admin.py, server/users/admin.py; ADR 0020 amendment).

The happy paths check that every session and personal API token of the account dies at
once; the negative table sends the disable form every wrong way (forged by a weaker
role, without CSRF, from another origin, without or with a wrong second factor, at an
account the owner may not touch) and checks each is refused with the expected status
*and* that the account still works. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bastion.server.orgs.models import OrgMember
from bastion.server.ui.security import SESSION_COOKIE, csrf_token

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery"
NEW_PASSWORD = "a new passphrase for you"


@dataclass
class Browser:
    client: TestClient
    csrf: str


@dataclass
class Owner:
    browser: Browser
    secret: str
    recovery_codes: list[str]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetWorld]:
    with shared_world(request.param, tmp_path_factory.mktemp("dash-admin")) as w:
        yield w


def _code(world: FleetWorld, secret: str) -> str:
    """The TOTP code of the next 30-second step (each step's code is accepted once)."""
    from bastion.server.auth import totp

    world.ctx.clock.advance(30)
    return totp.code_at(secret, int(world.ctx.clock.now().timestamp()) // 30)


def _login(world: FleetWorld, email: str, password: str = PASSWORD, **extra: str) -> Any:
    return world.client.post("/v1/auth/login", json={"email": email, "password": password, **extra})


def _bearer(response: Any) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def _browser(world: FleetWorld, headers: dict[str, str]) -> Browser:
    client = TestClient(world.client.app, follow_redirects=False)
    token = headers["Authorization"].removeprefix("Bearer ")
    client.cookies.set(SESSION_COOKIE, token, path="/ui")
    return Browser(client, csrf_token(token))


@pytest.fixture(scope="module")
def owner(world: FleetWorld) -> Owner:
    """acme's owner, with TOTP enrolled, signed in with both factors."""
    enrol = world.headers["owner"]
    secret = world.client.post("/v1/me/totp", headers=enrol).json()["secret"]
    r = world.client.post("/v1/me/totp/confirm", headers=enrol, json={"code": _code(world, secret)})
    assert r.status_code == 200, r.text
    session = _bearer(_login(world, "owner@example.com", totp=_code(world, secret)))
    return Owner(_browser(world, session), secret, r.json()["recovery_codes"])


def _user(world: FleetWorld, name: str, *orgs: tuple[str, str]) -> tuple[str, dict[str, str]]:
    """A new user, member of acme (and of ``orgs``: (org id, standing)); its id and the
    headers of a session and of a personal API token: [session, token]."""
    from bastion.server.users import service

    with world.ctx.db.session() as session:
        user = service.create_user(world.ctx, session, f"{name}@example.com", PASSWORD, "cli:t")
        for org_id, role in ((world.org_id, "member"), *orgs):
            session.add(OrgMember(org_id=org_id, user_id=user.id, role=role))
        session.commit()
        user_id = user.id
    login = _bearer(_login(world, f"{name}@example.com"))
    pat = world.client.post("/v1/me/tokens", headers=login, json={"name": "t", "scopes": ["read"]})
    assert pat.status_code == 201, pat.text
    return user_id, {"session": login, "token": {"Authorization": f"Bearer {pat.json()['token']}"}}


def _alive(world: FleetWorld, creds: dict[str, Any]) -> bool:
    states = {world.client.get("/v1/me", headers=h).status_code for h in creds.values()}
    assert states in ({200}, {401}), states
    return states == {200}


def _post(browser: Browser, path: str, data: dict[str, str], **kw: Any) -> Any:
    return browser.client.post(path, data={"csrf": browser.csrf, **data}, **kw)


def _path(world: FleetWorld, user_id: str, action: str) -> str:
    return f"/ui/orgs/{world.org_id}/users/{user_id}/{action}"


def _other_org(world: FleetWorld) -> str:
    from sqlalchemy import select

    from bastion.server.orgs.models import Organisation

    with world.ctx.db.session(write=False) as session:
        return str(
            session.execute(
                select(Organisation.id).where(Organisation.name == "other")
            ).scalar_one()
        )


def test_reset_kills_every_session_and_token(world: FleetWorld, owner: Owner) -> None:
    user_id, creds = _user(world, "reset-me")
    page = owner.browser.client.get(f"/ui/orgs/{world.org_id}/users/{user_id}")
    assert page.status_code == 200 and 'id="reset-form"' in page.text, page.text
    r = _post(
        owner.browser,
        _path(world, user_id, "reset-password"),
        {
            "new_password": NEW_PASSWORD,
            "new_password_again": NEW_PASSWORD,
            "password": PASSWORD,
            "totp": _code(world, owner.secret),
        },
    )
    assert r.status_code == 200, r.text
    assert "2 session(s) and token(s) ended" in r.text
    assert not _alive(world, creds)
    assert _login(world, "reset-me@example.com").status_code == 401
    assert _login(world, "reset-me@example.com", NEW_PASSWORD).status_code == 200
    audit = owner.browser.client.get(f"/ui/orgs/{world.org_id}/audit").text
    assert "user.password_reset" in audit and user_id in audit


def test_disable_then_enable(world: FleetWorld, owner: Owner) -> None:
    user_id, creds = _user(world, "disable-me")
    proof = {"password": PASSWORD}
    r = _post(
        owner.browser,
        _path(world, user_id, "disable"),
        {**proof, "totp": _code(world, owner.secret)},
    )
    assert r.status_code == 200, r.text
    assert 'data-state="disabled"' in r.text and 'id="enable-form"' in r.text
    assert not _alive(world, creds)
    assert _login(world, "disable-me@example.com").status_code in {401, 403}
    members = owner.browser.client.get(f"/ui/orgs/{world.org_id}/members").text
    row = re.search(rf'<tr data-user="{user_id}">.*?</tr>', members, re.S)
    assert row and "disabled" in row.group(0)
    # a recovery code is a second factor too (and is spent)
    recovery = {**proof, "recovery_code": owner.recovery_codes[0]}
    r = _post(owner.browser, _path(world, user_id, "enable"), recovery)
    assert r.status_code == 200 and 'data-state="active"' in r.text, r.text
    assert not _alive(world, creds)  # enabling brings no credential back
    assert _login(world, "disable-me@example.com").status_code == 200
    events = world.audit_events()
    assert "user.disable" in events and "user.enable" in events


def test_refusals_leave_the_account_working(world: FleetWorld, owner: Owner) -> None:
    from bastion.server.users import repository as users_repo

    other = _other_org(world)
    target, creds = _user(world, "target")
    owns, owns_creds = _user(world, "owns-elsewhere", (other, "owner"))
    shared, shared_creds = _user(world, "in-two-orgs", (other, "member"))
    # a second owner of acme without TOTP
    owner2, owner2_creds = _user(world, "owner-two")
    with world.ctx.db.session() as session:
        row = session.get(OrgMember, (world.org_id, owner2))
        row.role = "owner"
        session.commit()
    browsers = {
        role: _browser(world, world.headers[role])
        for role in ("viewer", "operator", "admin", "stranger")
    }
    browsers["owner2"] = _browser(world, owner2_creds["session"])
    with world.ctx.db.session(write=False) as session:
        stranger_id = users_repo.get_user_by_email(session, "stranger@example.com").id

    def code() -> str:
        return _code(world, owner.secret)

    spent = code()
    warm = world.client.post(
        "/v1/auth/reauth",
        headers={"Authorization": f"Bearer {owner.browser.client.cookies[SESSION_COOKIE]}"},
        json={"password": PASSWORD, "totp": spent},
    )
    assert warm.status_code == 200, warm.text
    warm = world.client.post(
        "/v1/auth/reauth",
        headers={"Authorization": f"Bearer {owner.browser.client.cookies[SESSION_COOKIE]}"},
        json={"password": PASSWORD, "recovery_code": owner.recovery_codes[1]},
    )
    assert warm.status_code == 200, warm.text
    good = {"password": PASSWORD}
    cases: list[tuple[str, Browser, str, dict[str, str], dict[str, str], int, str]] = [
        # (case, who, target, form, headers, status, message)
        ("viewer forges it", browsers["viewer"], target, good, {}, 403, "owner"),
        ("operator forges it", browsers["operator"], target, good, {}, 403, "owner"),
        ("fleet admin forges it", browsers["admin"], target, good, {}, 403, "owner"),
        ("owner of another organisation", browsers["stranger"], target, good, {}, 404, ""),
        ("no CSRF token", owner.browser, target, {**good, "csrf": ""}, {}, 403, "CSRF"),
        (
            "cross-origin",
            owner.browser,
            target,
            good,
            {"Origin": "https://evil.example"},
            403,
            "origin",
        ),
        ("no second factor", owner.browser, target, good, {}, 403, "TOTP code"),
        ("wrong TOTP code", owner.browser, target, {**good, "totp": "000000"}, {}, 403, ""),
        ("spent TOTP code", owner.browser, target, {**good, "totp": spent}, {}, 403, ""),
        (
            "spent recovery code",
            owner.browser,
            target,
            {**good, "recovery_code": owner.recovery_codes[1], "totp": ""},
            {},
            403,
            "",
        ),
        (
            "wrong password",
            owner.browser,
            target,
            {"password": "not mine", "totp": "x"},
            {},
            403,
            "",
        ),
        ("owner without TOTP", browsers["owner2"], target, good, {}, 403, "enrol TOTP"),
        ("own account", owner.browser, "self", good, {}, 403, "your own account"),
        (
            "account owns an organisation",
            owner.browser,
            owns,
            good,
            {},
            403,
            "owns an organisation",
        ),
        ("account in another organisation", owner.browser, shared, good, {}, 403, "do not own"),
        ("account not a member", owner.browser, stranger_id, good, {}, 404, ""),
        ("no such account", owner.browser, "0" * 32, good, {}, 404, ""),
    ]
    own_id = world.client.get("/v1/me", headers=world.headers["owner"]).json()["id"]
    for case, who, user_id, form, headers, status, message in cases:
        data = {**form}
        if "totp" not in data and case not in {"no second factor", "owner without TOTP"}:
            data["totp"] = code()
        if case == "owner without TOTP":
            data["totp"] = "123456"
        path = _path(world, own_id if user_id == "self" else user_id, "disable")
        r = _post(who, path, data, headers=headers)
        assert r.status_code == status, (case, r.status_code, r.text[-600:])
        assert message in r.text, (case, r.text[-600:])
        for creds_ in (creds, owns_creds, shared_creds):
            assert _alive(world, creds_), case
    assert _alive(world, {"session": world.headers["stranger"]})
    assert world.client.get("/v1/me", headers=world.headers["owner"]).status_code == 200


def test_only_owners_see_the_manage_links(world: FleetWorld, owner: Owner) -> None:
    members = owner.browser.client.get(f"/ui/orgs/{world.org_id}/members").text
    assert 'class="manage"' in members
    viewer = _browser(world, world.headers["viewer"])
    page = viewer.client.get(f"/ui/orgs/{world.org_id}/members")
    assert page.status_code == 200 and 'class="manage"' not in page.text
    user_id, _ = _user(world, "peek")
    assert viewer.client.get(f"/ui/orgs/{world.org_id}/users/{user_id}").status_code == 403
    other = _other_org(world)
    owns, _ = _user(world, "owns-too", (other, "owner"))
    page = owner.browser.client.get(f"/ui/orgs/{world.org_id}/users/{owns}")
    assert page.status_code == 200 and 'id="admin-refusal"' in page.text
    assert 'id="disable-form"' not in page.text and 'id="reset-form"' not in page.text


def test_owner_invites_and_withdraws_and_others_cannot(world: FleetWorld, owner: Owner) -> None:
    members = f"/ui/orgs/{world.org_id}/members"
    invite = f"/ui/orgs/{world.org_id}/invitations"
    for role, status in (("viewer", 403), ("admin", 403), ("stranger", 404)):
        forged = _post(_browser(world, world.headers[role]), invite, {"email": "x@example.org"})
        assert forged.status_code == status, (role, forged.text)
    r = owner.browser.client.post(invite, data={"email": "y@example.org"})
    assert r.status_code == 403 and "CSRF" in r.text, r.text
    page = owner.browser.client.get(members).text
    assert "x@example.org" not in page and "y@example.org" not in page
    r = _post(owner.browser, invite, {"email": "New.Hire@Example.org", "role": "member"})
    assert r.status_code == 303, r.text
    row = re.search(
        r'<tr data-invitation="([0-9a-f]+)"><td>new.hire@example.org<',
        owner.browser.client.get(members).text,
    )
    assert row, owner.browser.client.get(members).text
    again = _post(owner.browser, invite, {"email": "new.hire@example.org"})
    assert again.status_code == 409, again.text
    withdraw = f"/ui/orgs/{world.org_id}/invitations/{row.group(1)}/revoke"
    assert _post(_browser(world, world.headers["viewer"]), withdraw, {}).status_code == 403
    assert _post(owner.browser, withdraw, {}).status_code == 303
    assert "new.hire@example.org" not in owner.browser.client.get(members).text
    assert "org.invite" in world.audit_events() and "org.invitation_revoke" in world.audit_events()


def test_sign_out_other_sessions_from_the_account_page(world: FleetWorld) -> None:
    from bastion import limits

    _, creds = _user(world, "many-sessions")
    second = _bearer(_login(world, "many-sessions@example.com"))
    third = _bearer(_login(world, "many-sessions@example.com"))
    me = _browser(world, _bearer(_login(world, "many-sessions@example.com")))
    page = me.client.get("/ui/account").text
    ids = re.findall(r'<tr data-session="([0-9a-f]+)">', page)
    assert len(ids) == 4 and 'id="sessions-revoke-others-form"' in page
    listed = world.client.get("/v1/me/sessions", headers=second).json()
    second_id = next(s["id"] for s in listed if s["current"])
    r = _post(me, f"/ui/account/sessions/{second_id}/revoke", {})
    assert r.status_code == 303, r.text
    assert world.client.get("/v1/me", headers=second).status_code == 401
    assert world.client.get("/v1/me", headers=third).status_code == 200
    # a stale session: no buttons, and the POST is refused
    world.ctx.clock.advance(limits.REAUTH_MAX_AGE_SECONDS + 1)
    page = me.client.get("/ui/account").text
    assert 'id="sessions-need-reauth"' in page and 'id="sessions-revoke-others-form"' not in page
    r = _post(me, "/ui/account/sessions/revoke-others", {})
    assert r.status_code == 403 and "recent login" in r.text, r.text
    assert world.client.get("/v1/me", headers=third).status_code == 200
    r = _post(me, "/ui/account/reauth", {"password": PASSWORD})
    assert r.status_code == 303, r.text
    r = _post(me, "/ui/account/sessions/revoke-others", {})
    assert r.status_code == 200 and "2 other session(s) signed out" in r.text, r.text
    assert world.client.get("/v1/me", headers=third).status_code == 401
    assert not _alive(world, {"session": creds["session"]})
    assert me.client.get("/ui/account").status_code == 200


# --- sign-in rules ------------------------------------------------------------------------------


def _rules(world: FleetWorld) -> tuple[bool, bool]:
    from bastion.server.orgs.models import Organisation

    with world.ctx.db.session(write=False) as session:
        org = session.get(Organisation, world.org_id)
        assert org is not None
        return org.require_2fa, org.require_oidc


def test_sign_in_rules_form_refusals(world: FleetWorld, owner: Owner) -> None:
    """The rules form sent every wrong way: refused, and the rules unchanged."""
    path = f"/ui/orgs/{world.org_id}/security"
    viewer = _browser(world, world.headers["viewer"])
    stranger = _browser(world, world.headers["stranger"])
    before = _rules(world)
    cases: list[tuple[str, Browser, dict[str, str], dict[str, str], int, str]] = [
        # (case, who, form, headers, status, message)
        ("a viewer forges it", viewer, {"password": PASSWORD, "require_2fa": "on"}, {}, 403,
         "owner"),
        ("owner of another organisation", stranger, {"password": PASSWORD}, {}, 404, ""),
        ("no CSRF token", owner.browser, {"password": PASSWORD, "csrf": ""}, {}, 403, "CSRF"),
        ("cross-origin", owner.browser, {"password": PASSWORD},
         {"Origin": "https://evil.example"}, 403, "origin"),
        ("no password", owner.browser, {"require_2fa": "on"}, {}, 422, ""),
        ("wrong password", owner.browser, {"password": "not mine", "require_2fa": "on"}, {},
         403, ""),
        ("no second factor", owner.browser, {"password": PASSWORD, "require_2fa": "on"}, {},
         403, "second factor required"),
        ("wrong TOTP code", owner.browser,
         {"password": PASSWORD, "totp": "000000", "require_2fa": "on"}, {}, 403, ""),
        ("a checkbox that is not 'on'", owner.browser,
         {"password": PASSWORD, "require_2fa": "yes"}, {}, 400, "checkbox"),
    ]  # fmt: skip
    for case, who, form, headers, status, message in cases:
        data = dict(form)
        if case == "a checkbox that is not 'on'":
            data["totp"] = _code(world, owner.secret)
        r = _post(who, path, data, headers=headers)
        assert r.status_code == status, (case, r.status_code, r.text[-600:])
        assert message in r.text, (case, r.text[-600:])
        assert _rules(world) == before, case


def test_owner_sets_and_clears_the_2fa_rule(world: FleetWorld, owner: Owner) -> None:
    path = f"/ui/orgs/{world.org_id}/security"
    members = owner.browser.client.get(f"/ui/orgs/{world.org_id}/members").text
    assert 'id="security-form"' in members and 'id="rule-2fa">no<' in members
    assert 'id="require-oidc"' not in members  # this server has no OpenID provider
    viewer_page = _browser(world, world.headers["viewer"]).client.get(
        f"/ui/orgs/{world.org_id}/members"
    )  # members see the rules, only owners the form
    assert 'id="rule-2fa">no<' in viewer_page.text
    assert 'id="security-form"' not in viewer_page.text
    _member, creds = _user(world, "no-2fa-member")
    org_url = f"/v1/orgs/{world.org_id}"
    assert world.client.get(org_url, headers=creds["session"]).status_code == 200
    try:
        r = _post(
            owner.browser,
            path,
            {"password": PASSWORD, "totp": _code(world, owner.secret), "require_2fa": "on"},
        )
        assert r.status_code == 303, r.text
        assert _rules(world) == (True, False)
        # the rule bites on the member's next request
        refused = world.client.get(org_url, headers=creds["session"])
        assert refused.status_code == 403, refused.text
        page = owner.browser.client.get(f"/ui/orgs/{world.org_id}/members").text
        assert 'id="rule-2fa">yes<' in page and 'id="require-2fa" checked' in page
        # the viewer signed in without a second factor: refused by the rule too
        viewer = _browser(world, world.headers["viewer"]).client.get(
            f"/ui/orgs/{world.org_id}/members"
        )
        assert viewer.status_code == 403, viewer.text
    finally:  # an unticked box clears the rule (a recovery code is a second factor too)
        r = _post(
            owner.browser,
            path,
            {"password": PASSWORD, "recovery_code": owner.recovery_codes[2]},
        )
        assert r.status_code == 303, r.text
    assert _rules(world) == (False, False)
    assert world.client.get(org_url, headers=creds["session"]).status_code == 200
    assert world.audit_events().count("org.update") >= 2
