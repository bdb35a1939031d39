"""The dashboard over HTTP (no browser): sign-in, the cookie, CSRF and origin checks, RBAC.

Runs on SQLite and PostgreSQL with one app per module (devicekit.shared_world). The
negative table sends the revoke form of a live device every wrong way and checks that
each is refused with the expected status *and* that the device is still active.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bastion.server.ui.security import (
    CONTENT_SECURITY_POLICY,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    csrf_token,
)
from bastion.tpm.software import SoftwareTpm

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetWorld]:
    with shared_world(request.param, tmp_path_factory.mktemp("dash")) as w:
        yield w


def _client(world: FleetWorld) -> TestClient:
    """A client of the same app with its own cookie jar, not following redirects."""
    return TestClient(world.client.app, follow_redirects=False)


def _token(world: FleetWorld, role: str) -> str:
    return world.headers[role]["Authorization"].removeprefix("Bearer ")


def _as(world: FleetWorld, role: str) -> tuple[TestClient, str]:
    """A client whose cookie holds ``role``'s login session, and its CSRF token."""
    client = _client(world)
    token = _token(world, role)
    client.cookies.set(SESSION_COOKIE, token, path="/ui")
    return client, csrf_token(token)


def _device(world: FleetWorld, folder: Path, serial: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    identity = world.enrol(SoftwareTpm(folder / "tpm.state"), world.create_key(), serial=serial)
    return identity.device_id


def _state(world: FleetWorld, device_id: str) -> str:
    r = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{device_id}", headers=world.headers["admin"]
    )
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def _detail(html: str) -> str:
    found = re.search(r'id="error-detail">([^<]*)<', html)
    return found.group(1) if found else ""


# --- sign-in -----------------------------------------------------------------------------------


def _signin_form(client: TestClient) -> str:
    r = client.get("/ui/signin")
    assert r.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert found, r.text
    return found.group(1)


def test_sign_in_sets_the_session_cookie(world: FleetWorld) -> None:
    client = _client(world)
    csrf = _signin_form(client)
    r = client.post(
        "/ui/signin", data={"email": "viewer@example.com", "password": PASSWORD, "csrf": csrf}
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui/fleets", r.text
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # the test server listens on loopback over plain HTTP
    token = cookie.split(";")[0].split("=", 1)[1]
    assert token.startswith("bst_ses_")
    assert client.get("/ui/fleets").status_code == 200
    assert "user.login" in world.audit_events()


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("no form cookie", 401, "sign-in form has expired"),
        ("no token", 401, "has no CSRF token"),
        ("wrong token", 401, "does not belong to this session"),
        ("other origin", 401, "another origin"),
        ("cross-site fetch", 401, "cross-site form refused"),
        ("wrong password", 401, "wrong e-mail, password or second factor"),
    ],
)
def test_sign_in_refusals(world: FleetWorld, case: str, status: int, message: str) -> None:
    client = _client(world)
    csrf = _signin_form(client)
    data: dict[str, Any] = {"email": "viewer@example.com", "password": PASSWORD, "csrf": csrf}
    headers: dict[str, str] = {}
    if case == "no form cookie":
        client.cookies.delete(LOGIN_CSRF_COOKIE, path="/ui")
    elif case == "no token":
        del data["csrf"]
    elif case == "wrong token":
        data["csrf"] = "x" * len(csrf)
    elif case == "other origin":
        headers["Origin"] = "http://evil.example"
    elif case == "cross-site fetch":
        headers["Sec-Fetch-Site"] = "cross-site"
    elif case == "wrong password":
        data["password"] = "wrong password!"
    r = client.post("/ui/signin", data=data, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.text, r.text
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")


# --- the cookie holds a user session, nothing else -------------------------------------------


def test_only_a_live_user_session_opens_a_page(world: FleetWorld, tmp_path: Path) -> None:
    pat = world.client.post(
        "/v1/me/tokens", json={"name": "pat", "scopes": ["read"]}, headers=world.headers["owner"]
    )
    assert pat.status_code == 201, pat.text
    folder = tmp_path / "d"
    folder.mkdir()
    tpm = SoftwareTpm(folder / "tpm.state")
    identity = world.enrol(tpm, world.create_key(), serial="cookie-dev")
    device_key = world.device_headers(identity, tpm)["Authorization"].removeprefix("Bearer ")
    refused = {
        "no cookie": None,
        "garbage": "bst_ses_nonsense",
        "expired session": _token(world, "expired"),
        "personal API token": pat.json()["token"],
        "provisioning key": world.create_key(),
        "device API key": device_key,
    }
    for case, value in refused.items():
        client = _client(world)
        if value is not None:
            client.cookies.set(SESSION_COOKIE, value, path="/ui")
        r = client.get("/ui/fleets")
        assert r.status_code == 303 and r.headers["location"] == "/ui/signin", (case, r.text)
        r = client.post("/ui/signout", data={"csrf": csrf_token(value or "")})
        assert r.status_code == 401, (case, r.status_code, r.text)


# --- the revoke form: every wrong way is refused, the device stays active --------------------


def test_revoke_negative_table(world: FleetWorld, tmp_path: Path) -> None:
    device_id = _device(world, tmp_path / "d", "neg-table")
    path = f"/ui/fleets/{world.fleet_id}/devices/{device_id}/revoke"
    operator, operator_csrf = _as(world, "operator")
    _, admin_csrf = _as(world, "admin")
    viewer, viewer_csrf = _as(world, "viewer")
    stranger, stranger_csrf = _as(world, "stranger")
    anonymous = _client(world)
    own = "http://testserver"
    cases: list[tuple[str, TestClient, dict[str, Any], dict[str, str], int, str]] = [
        ("no CSRF token", operator, {}, {}, 403, "has no CSRF token"),
        ("empty CSRF token", operator, {"csrf": ""}, {}, 403, "has no CSRF token"),
        ("another session's token", operator, {"csrf": admin_csrf}, {}, 403, "does not belong"),
        ("one flipped character", operator, {"csrf": "0" + operator_csrf[1:]}, {}, 403, ""),
        ("oversize token", operator, {"csrf": "a" * 5000}, {}, 422, ""),
        (
            "other origin",
            operator,
            {"csrf": operator_csrf},
            {"Origin": "http://127.0.0.1:9"},
            403,
            "another origin",
        ),
        (
            "Origin null",
            operator,
            {"csrf": operator_csrf},
            {"Origin": "null"},
            403,
            "another origin",
        ),
        (
            "same-site fetch",
            operator,
            {"csrf": operator_csrf},
            {"Sec-Fetch-Site": "same-site", "Origin": own},
            403,
            "cross-site",
        ),
        ("viewer with its token", viewer, {"csrf": viewer_csrf}, {}, 403, "not enough"),
        ("viewer without token", viewer, {}, {}, 403, "CSRF"),
        ("stranger", stranger, {"csrf": stranger_csrf}, {}, 404, "not found"),
        ("anonymous", anonymous, {"csrf": operator_csrf}, {}, 401, "sign in"),
    ]
    if operator_csrf[0] == "0":
        cases[3] = (
            "one flipped character",
            operator,
            {"csrf": "1" + operator_csrf[1:]},
            {},
            403,
            "",
        )
    for case, client, data, headers, status, message in cases:
        r = client.post(path, data=data, headers=headers)
        assert r.status_code == status, (case, r.status_code, r.text[:300])
        assert message in r.text, (case, _detail(r.text))
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, case
        assert _state(world, device_id) == "active", case
    r = operator.post(
        path, data={"csrf": operator_csrf}, headers={"Origin": own, "Sec-Fetch-Site": "same-origin"}
    )
    assert r.status_code == 303, r.text
    assert _state(world, device_id) == "revoked"
    assert "device.revoke" in world.audit_events()


def test_viewer_page_has_no_revoke_form(world: FleetWorld, tmp_path: Path) -> None:
    device_id = _device(world, tmp_path / "d", "viewer-page")
    page = f"/ui/fleets/{world.fleet_id}/devices/{device_id}"
    viewer, _ = _as(world, "viewer")
    operator, _ = _as(world, "operator")
    assert 'id="revoke"' not in viewer.get(page).text
    assert 'id="revoke"' in operator.get(page).text
    # the provisioning-key tab is an admin's: hidden from the operator, refused if typed
    assert "Provisioning keys" not in operator.get(f"/ui/fleets/{world.fleet_id}").text
    r = operator.get(f"/ui/fleets/{world.fleet_id}/provisioning-keys")
    assert r.status_code == 403 and "admin needed" in r.text


def test_pages_carry_the_security_headers_and_no_script(world: FleetWorld) -> None:
    owner, _ = _as(world, "owner")
    for path in ("/ui/signin", "/ui/fleets", f"/ui/fleets/{world.fleet_id}", "/ui/account"):
        r = owner.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        assert "<script" not in r.text.lower()
    # an error page too, and the root redirect
    r = owner.get("/ui/fleets/nope")
    assert r.status_code == 404 and r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    r = _client(world).get("/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/"


def test_values_are_escaped(world: FleetWorld, tmp_path: Path) -> None:
    device_id = _device(world, tmp_path / "d", "<b>serial</b>")
    operator, _ = _as(world, "operator")
    html = operator.get(f"/ui/fleets/{world.fleet_id}/devices/{device_id}").text
    assert "<b>serial</b>" not in html and "&lt;b&gt;serial&lt;/b&gt;" in html


def test_audit_page_shows_a_damaged_chain(world: FleetWorld) -> None:
    from sqlalchemy import select

    from bastion.server.audit.models import AuditEntry

    owner, _ = _as(world, "owner")
    page = f"/ui/orgs/{world.org_id}/audit"
    r = owner.get(page)
    assert r.status_code == 200 and 'data-chain="intact"' in r.text, r.text
    with world.ctx.db.session() as session:
        entry = session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars().first()
        original = entry.details
        entry.details = original.replace("}", ', "x": 1}', 1)
        session.commit()
    try:
        r = owner.get(page)
        assert r.status_code == 200 and 'data-chain="broken"' in r.text, r.text
        assert "NOT verified" in r.text
    finally:
        with world.ctx.db.session() as session:
            session.get(AuditEntry, entry.seq).details = original
            session.commit()
    assert 'data-chain="intact"' in owner.get(page).text
    # the audit log is an organisation owner's, as on the API
    admin, _ = _as(world, "admin")
    assert admin.get(page).status_code == 403


# --- the account: re-authentication, TOTP enrolment, tokens --------------------------------


def _page_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def test_enrol_totp_and_create_tokens_from_the_account_page(world: FleetWorld) -> None:
    from bastion import limits
    from bastion.server.auth import totp
    from bastion.server.users import service as users

    with world.ctx.db.session() as session:
        users.create_user(world.ctx, session, "acct@example.com", PASSWORD, "cli:test")
    client = _client(world)
    r = client.post(
        "/ui/signin",
        data={"email": "acct@example.com", "password": PASSWORD, "csrf": _signin_form(client)},
    )
    assert r.status_code == 303, r.text
    csrf = _page_csrf(client.get("/ui/account").text)
    # a session older than the re-authentication window may not enrol TOTP
    world.ctx.clock.advance(limits.REAUTH_MAX_AGE_SECONDS + 1)
    page = client.get("/ui/account").text
    assert 'data-fresh="no"' in page
    r = client.post("/ui/account/totp", data={"csrf": csrf})
    assert r.status_code == 403 and "recent login" in r.text, r.text
    r = client.post("/ui/account/tokens", data={"csrf": csrf, "name": "w", "scopes": "write"})
    assert r.status_code == 403 and "recent login" in r.text, r.text
    r = client.post("/ui/account/reauth", data={"csrf": csrf, "password": "wrong password!"})
    assert r.status_code == 403, r.text
    r = client.post("/ui/account/reauth", data={"csrf": csrf, "password": PASSWORD})
    assert r.status_code == 303, r.text
    assert 'data-fresh="yes"' in client.get("/ui/account").text
    r = client.post("/ui/account/totp", data={"csrf": csrf})
    assert r.status_code == 200, r.text
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', r.text)
    assert secret, r.text
    code = totp.code_at(secret.group(1), int(world.ctx.clock.now().timestamp()) // 30)
    r = client.post("/ui/account/totp/confirm", data={"csrf": csrf, "code": code})
    assert r.status_code == 200 and 'id="recovery-codes"' in r.text, r.text
    assert "enabled" in re.search(r'id="totp-state">([^<]*)<', r.text).group(1)
    # with TOTP on, a write-scoped token needs the second factor given again
    tokens = {"csrf": csrf, "name": "ci", "scopes": ["read", "write"]}
    r = client.post("/ui/account/tokens", data=tokens)
    assert r.status_code == 403 and "password and second factor" in r.text, r.text
    world.ctx.clock.advance(30)
    code = totp.code_at(secret.group(1), int(world.ctx.clock.now().timestamp()) // 30)
    r = client.post("/ui/account/reauth", data={"csrf": csrf, "password": PASSWORD, "totp": code})
    assert r.status_code == 303, r.text
    r = client.post("/ui/account/tokens", data=tokens)
    assert r.status_code == 201, r.text
    secret_token = re.search(r'id="new-token">.*?<pre>(bst_pat_[A-Za-z0-9_]+)</pre>', r.text, re.S)
    assert secret_token, r.text
    me = world.client.get("/v1/me", headers={"Authorization": f"Bearer {secret_token.group(1)}"})
    assert me.status_code == 200 and me.json()["email"] == "acct@example.com"
    r = client.post("/ui/account/tokens", data={"csrf": csrf, "name": "x", "scopes": "root"})
    assert r.status_code == 400 and "unknown token scopes" in r.text, r.text


def _login(world: FleetWorld, email: str, **extra: str) -> dict[str, str]:
    r = world.client.post("/v1/auth/login", json={"email": email, "password": PASSWORD, **extra})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _code(world: FleetWorld, secret: str) -> str:
    """The TOTP code of the next 30-second step (a step's code is accepted once)."""
    from bastion.server.auth import totp

    world.ctx.clock.advance(30)
    return totp.code_at(secret, int(world.ctx.clock.now().timestamp()) // 30)


def test_turn_totp_off_and_change_the_password_from_the_account_page(world: FleetWorld) -> None:
    from bastion import limits

    api = world.client
    with world.ctx.db.session() as session:
        from bastion.server.users import service as users

        users.create_user(world.ctx, session, "pw@example.com", PASSWORD, "cli:test")
    enrol = _login(world, "pw@example.com")
    secret = api.post("/v1/me/totp", headers=enrol).json()["secret"]
    r = api.post("/v1/me/totp/confirm", headers=enrol, json={"code": _code(world, secret)})
    assert r.status_code == 200, r.text
    # the browser's session, and another one (a second browser) that must die on change
    browser = _login(world, "pw@example.com", totp=_code(world, secret))
    other = _login(world, "pw@example.com", totp=_code(world, secret))
    client = _client(world)
    token = browser["Authorization"].removeprefix("Bearer ")
    client.cookies.set(SESSION_COOKIE, token, path="/ui")
    csrf = csrf_token(token)
    world.ctx.clock.advance(limits.REAUTH_MAX_AGE_SECONDS + 1)
    page = client.get("/ui/account").text
    assert 'id="totp-disable-needs-reauth"' in page and 'id="password-needs-reauth"' in page
    assert 'id="totp-disable-form"' not in page and 'id="password-form"' not in page
    # a stale session is refused, whatever the form says
    r = client.post("/ui/account/totp/disable", data={"csrf": csrf, "code": _code(world, secret)})
    assert r.status_code == 403 and "recent login" in r.text, r.text
    change = {
        "csrf": csrf,
        "current_password": PASSWORD,
        "new_password": "a brand new passphrase",
        "new_password_again": "a brand new passphrase",
    }
    r = client.post("/ui/account/password", data=change)
    assert r.status_code == 403 and "recent login" in r.text, r.text
    # re-authenticate with password and second factor
    r = client.post(
        "/ui/account/reauth",
        data={"csrf": csrf, "password": PASSWORD, "totp": _code(world, secret)},
    )
    assert r.status_code == 303, r.text
    page = client.get("/ui/account").text
    assert 'id="totp-disable-form"' in page and 'id="password-form"' in page
    # the password change's negative table: nothing changes
    for case, data, status, message in [
        ("no CSRF", {k: v for k, v in change.items() if k != "csrf"}, 403, "CSRF"),
        ("mismatch", {**change, "new_password_again": "something else!!"}, 400, "differ"),
        ("wrong current", {**change, "current_password": "not my password"}, 403, ""),
        ("too short", {**change, "new_password": "short", "new_password_again": "short"}, 422, ""),
        ("same", {**change, "new_password": PASSWORD, "new_password_again": PASSWORD}, 400, ""),
    ]:
        r = client.post("/ui/account/password", data=data)
        assert r.status_code == status, (case, r.status_code, _detail(r.text))
        assert message in r.text, (case, _detail(r.text))
        assert api.get("/v1/me", headers=other).status_code == 200, case
    # wrong re-auth attempt above ("wrong current") may have made the session stale: prove again
    r = client.post(
        "/ui/account/reauth",
        data={"csrf": csrf, "password": PASSWORD, "totp": _code(world, secret)},
    )
    assert r.status_code == 303, r.text
    r = client.post("/ui/account/password", data=change)
    assert r.status_code == 200 and "2 other session(s) signed out" in r.text, r.text
    assert api.get("/v1/me", headers=other).status_code == 401
    assert api.get("/v1/me", headers=enrol).status_code == 401
    assert client.get("/ui/account").status_code == 200  # this session lives on
    assert "user.password_change" in world.audit_events()
    # TOTP off: a wrong code is refused, a current one turns it off
    r = client.post("/ui/account/totp/disable", data={"csrf": csrf, "code": "000000"})
    assert r.status_code in {401, 403}, r.text
    assert re.search(r'id="totp-state">([^<]*)<', client.get("/ui/account").text)[1] == "enabled"
    r = client.post(
        "/ui/account/reauth",
        data={"csrf": csrf, "password": change["new_password"], "totp": _code(world, secret)},
    )
    assert r.status_code == 303, r.text
    r = client.post("/ui/account/totp/disable", data={"csrf": csrf, "code": _code(world, secret)})
    assert r.status_code == 200 and "TOTP is off." in r.text, r.text
    assert "not enabled" in re.search(r'id="totp-state">([^<]*)<', r.text)[1]
    login = api.post(
        "/v1/auth/login", json={"email": "pw@example.com", "password": change["new_password"]}
    )
    assert login.status_code == 200, login.text


# --- device commands ----------------------------------------------------------------------------


def _commands(world: FleetWorld, device_id: str) -> list[dict[str, Any]]:
    r = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{device_id}/commands",
        headers=world.headers["viewer"],
    )
    assert r.status_code == 200, r.text
    return list(r.json())


def test_device_commands_from_the_device_page(world: FleetWorld, tmp_path: Path) -> None:
    device_id = _device(world, tmp_path / "d", "commands-page")
    page = f"/ui/fleets/{world.fleet_id}/devices/{device_id}"
    path = f"{page}/commands"
    operator, operator_csrf = _as(world, "operator")
    viewer, viewer_csrf = _as(world, "viewer")
    stranger, stranger_csrf = _as(world, "stranger")
    assert 'id="command-form"' in operator.get(page).text
    viewer_page = viewer.get(page)
    assert viewer_page.status_code == 200 and 'id="command-form"' not in viewer_page.text
    assert 'id="commands"' in viewer_page.text  # the list is a viewer's, as on the API
    for case, client, data, status, message in [
        (
            "viewer's forged form",
            viewer,
            {"csrf": viewer_csrf, "kind": "reboot"},
            403,
            "not enough",
        ),
        ("no CSRF token", operator, {"kind": "reboot"}, 403, "CSRF"),
        ("another session's token", operator, {"csrf": viewer_csrf, "kind": "reboot"}, 403, ""),
        ("stranger", stranger, {"csrf": stranger_csrf, "kind": "reboot"}, 404, "not found"),
        ("wipe is not offered", operator, {"csrf": operator_csrf, "kind": "wipe"}, 422, ""),
        ("unknown kind", operator, {"csrf": operator_csrf, "kind": "rm -rf"}, 422, ""),
        (
            "ttl too long",
            operator,
            {"csrf": operator_csrf, "kind": "reboot", "ttl_minutes": "99999"},
            422,
            "",
        ),
    ]:
        r = client.post(path, data=data)
        assert r.status_code == status, (case, r.status_code, _detail(r.text))
        assert message in r.text, (case, _detail(r.text))
        assert _commands(world, device_id) == [], case
    r = operator.post(path, data={"csrf": operator_csrf, "kind": "reboot"})
    assert r.status_code == 303 and r.headers["location"] == page, r.text
    (queued,) = _commands(world, device_id)
    assert queued["kind"] == "reboot" and queued["status"] == "queued"
    html = operator.get(page).text
    assert f'data-command="{queued["id"]}" data-kind="reboot" data-status="queued"' in html
    assert "device.command.queue" in world.audit_events()
    # cancel: a viewer's forged cancel is refused, the operator's works
    cancel = f"{path}/{queued['id']}/cancel"
    assert viewer.post(cancel, data={"csrf": viewer_csrf}).status_code == 403
    assert _commands(world, device_id)[0]["status"] == "queued"
    assert operator.post(cancel, data={"csrf": operator_csrf}).status_code == 303
    assert _commands(world, device_id)[0]["status"] == "cancelled"
    r = operator.post(cancel, data={"csrf": operator_csrf})
    assert r.status_code == 409 and "already cancelled" in r.text, r.text
    # a revoked device takes no command, and its page offers none
    world.client.post(
        f"/v1/fleets/{world.fleet_id}/devices/{device_id}/revoke", headers=world.headers["operator"]
    )
    assert 'id="command-form"' not in operator.get(page).text
    r = operator.post(path, data={"csrf": operator_csrf, "kind": "attest"})
    assert r.status_code == 409 and "revoked" in r.text, r.text
