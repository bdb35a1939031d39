"""Account lifecycle: disable/reset kill every credential, re-authentication, sessions.

Runs on SQLite and PostgreSQL (the ``api`` fixture). The server-admin operations are
called as ``bastion server user ...`` calls them: :mod:`bastion.server.users.lifecycle`
on the database directly.
"""

from __future__ import annotations

import datetime as dt

import pytest

from bastion import limits
from bastion.server.audit.service import list_entries
from bastion.server.auth import totp
from bastion.server.auth.principal import Principal, PrincipalKind, Via
from bastion.server.auth.reauth import is_fresh
from bastion.server.users import lifecycle

PW = "correct horse battery"
NEW_PW = "a brand new passphrase"
STALE = limits.REAUTH_MAX_AGE_SECONDS + 1


def events(api) -> list[str]:
    with api.ctx.db.session(write=False) as session:
        return [e.event for e in list_entries(session, org_id=None, limit=500)]


def admin(api, fn, *args):
    with api.ctx.db.session() as session:
        return fn(api.ctx, session, *args, "cli:test")


def pat(api, session: dict[str, str], scopes: list[str]) -> dict[str, str]:
    made = api.client.post("/v1/me/tokens", headers=session, json={"name": "t", "scopes": scopes})
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['token']}"}


def status(api, headers: dict[str, str]) -> int:
    return int(api.client.get("/v1/me", headers=headers).status_code)


def test_disabled_user_session_and_token_get_401(api) -> None:
    session = api.user_and_login("ann@example.org")
    token = pat(api, session, ["write"])
    other = api.user_and_login("bob@example.org")
    assert status(api, session) == status(api, token) == 200
    _user, killed = admin(api, lifecycle.set_disabled, "ann@example.org", True)
    assert killed == 2
    assert status(api, session) == 401
    assert status(api, token) == 401
    assert status(api, other) == 200  # nobody else is touched
    refused = api.client.post("/v1/auth/login", json={"email": "ann@example.org", "password": PW})
    assert refused.status_code == 401
    # enabling brings no credential back; a new login works
    admin(api, lifecycle.set_disabled, "ann@example.org", False)
    assert status(api, session) == 401 and status(api, token) == 401
    assert status(api, api.login("ann@example.org")) == 200
    assert {"user.disable", "user.enable"} <= set(events(api))


def test_password_reset_kills_sessions_and_tokens(api) -> None:
    first = api.user_and_login("ann@example.org")
    second = api.login("ann@example.org")
    token = pat(api, first, ["read"])
    _user, killed = admin(api, lifecycle.reset_password, "ann@example.org", NEW_PW)
    assert killed == 3
    assert [status(api, h) for h in (first, second, token)] == [401, 401, 401]
    old = api.client.post("/v1/auth/login", json={"email": "ann@example.org", "password": PW})
    assert old.status_code == 401
    assert status(api, api.login("ann@example.org", NEW_PW)) == 200
    assert "user.password_reset" in events(api)


@pytest.mark.parametrize(
    ("email", "password", "error"),
    [
        ("nobody@example.org", NEW_PW, "NotFoundError"),
        ("ann@example.org", "short", "FormatError"),
        ("not an address", NEW_PW, "FormatError"),
    ],
)
def test_password_reset_refusals(api, email, password, error) -> None:
    api.user("ann@example.org")
    with pytest.raises(Exception) as caught:
        admin(api, lifecycle.reset_password, email, password)
    assert type(caught.value).__name__ == error
    assert status(api, api.login("ann@example.org")) == 200


# (method, path, body) of every change that needs a fresh session; ``{other}`` is the
# id of another session of the same user
FRESH_ONLY = [
    ("POST", "/v1/me/password", {"current_password": PW, "new_password": NEW_PW}),
    ("POST", "/v1/me/totp", None),
    ("POST", "/v1/me/tokens", {"name": "w", "scopes": ["write"]}),
    ("POST", "/v1/me/tokens", {"name": "a", "scopes": ["read", "admin"]}),
    ("DELETE", "/v1/me/sessions/{other}", None),
    ("DELETE", "/v1/me/sessions", None),
]


def _other_session(api, session: dict[str, str]) -> str:
    api.login("ann@example.org")
    listed = api.client.get("/v1/me/sessions", headers=session).json()
    return next(s["id"] for s in listed if not s["current"])


@pytest.mark.parametrize(
    ("method", "path", "body"), FRESH_ONLY, ids=[f"{m} {p}" for m, p, _ in FRESH_ONLY]
)
def test_stale_session_needs_reauth(api, clock, method, path, body) -> None:
    session = api.user_and_login("ann@example.org")
    other = _other_session(api, session)
    clock.advance(STALE)
    url = path.format(other=other)
    stale = api.client.request(method, url, headers=session, json=body)
    assert stale.status_code == 403, stale.text
    assert stale.json()["error"] == "reauth_required"
    assert "/v1/auth/reauth" in stale.json()["detail"]
    wrong = api.client.post("/v1/auth/reauth", headers=session, json={"password": "nope"})
    assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
    again = api.client.request(method, url, headers=session, json=body)
    assert again.json().get("error") == "reauth_required"
    ok = api.client.post("/v1/auth/reauth", headers=session, json={"password": PW})
    assert ok.status_code == 200, ok.text
    fresh = api.client.request(method, url, headers=session, json=body)
    assert fresh.status_code in (200, 201, 204), fresh.text
    assert {"user.reauth", "user.reauth_failed"} <= set(events(api))


def test_fresh_login_needs_no_reauth_and_read_tokens_never_do(api, clock) -> None:
    session = api.user_and_login("ann@example.org")
    clock.advance(limits.REAUTH_MAX_AGE_SECONDS)  # exactly at the limit: still fresh
    assert pat(api, session, ["write"])
    clock.advance(1)
    assert pat(api, session, ["read"])  # read scope: no re-auth
    current = next(s for s in api.client.get("/v1/me/sessions", headers=session).json())
    # revoking the calling session is a logout: no re-auth either
    gone = api.client.delete(f"/v1/me/sessions/{current['id']}", headers=session)
    assert gone.status_code == 204
    assert status(api, session) == 401


def test_tokens_can_never_make_security_changes(api) -> None:
    session = api.user_and_login("ann@example.org")
    token = pat(api, session, ["admin"])
    for method, path, body in FRESH_ONLY:
        answer = api.client.request(method, path.format(other="x"), headers=token, json=body)
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["error"] == "forbidden"
    assert (
        api.client.post("/v1/auth/reauth", headers=token, json={"password": PW}).status_code == 403
    )


def _enrol_totp(api, clock, session: dict[str, str]) -> tuple[str, list[str]]:
    secret = api.client.post("/v1/me/totp", headers=session).json()["secret"]
    step = int(clock.now().timestamp()) // 30
    confirm = api.client.post(
        "/v1/me/totp/confirm", headers=session, json={"code": totp.code_at(secret, step)}
    )
    assert confirm.status_code == 200, confirm.text
    clock.advance(30)
    return secret, confirm.json()["recovery_codes"]


def test_reauth_needs_second_factor_when_enrolled(api, clock) -> None:
    session = api.user_and_login("ann@example.org")
    secret, codes = _enrol_totp(api, clock, session)
    # the session predates the second factor: not fresh for disabling it
    step = int(clock.now().timestamp()) // 30
    body = {"code": totp.code_at(secret, step)}
    refused = api.client.post("/v1/me/totp/disable", headers=session, json=body)
    assert refused.json()["error"] == "reauth_required"
    no_code = api.client.post("/v1/auth/reauth", headers=session, json={"password": PW})
    assert no_code.status_code == 403
    bad_code = api.client.post(
        "/v1/auth/reauth", headers=session, json={"password": PW, "recovery_code": "nope-nope"}
    )
    assert bad_code.status_code == 403
    ok = api.client.post(
        "/v1/auth/reauth", headers=session, json={"password": PW, "recovery_code": codes[0]}
    )
    assert ok.status_code == 200 and ok.json()["two_factor"] is True
    replay = api.client.post(
        "/v1/auth/reauth", headers=session, json={"password": PW, "recovery_code": codes[0]}
    )
    assert replay.status_code == 403  # a recovery code is single-use here too
    done = api.client.post("/v1/me/totp/disable", headers=session, json=body)
    assert done.status_code == 204, done.text


def test_change_password(api, clock) -> None:
    session = api.user_and_login("ann@example.org")
    other = api.login("ann@example.org")
    token = pat(api, session, ["read"])
    wrong = api.client.post(
        "/v1/me/password",
        headers=session,
        json={"current_password": "not it at all", "new_password": NEW_PW},
    )
    assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
    short = api.client.post(
        "/v1/me/password", headers=session, json={"current_password": PW, "new_password": "short"}
    )
    assert short.status_code == 422
    same = api.client.post(
        "/v1/me/password", headers=session, json={"current_password": PW, "new_password": PW}
    )
    assert same.status_code == 400
    done = api.client.post(
        "/v1/me/password", headers=session, json={"current_password": PW, "new_password": NEW_PW}
    )
    assert done.status_code == 200 and done.json() == {"sessions_revoked": 1}
    assert status(api, session) == 200  # the caller's session lives on
    assert status(api, other) == 401
    assert status(api, token) == 200  # personal tokens do not hang on the password
    assert status(api, api.login("ann@example.org", NEW_PW)) == 200
    assert {"user.password_change", "user.password_change_failed"} <= set(events(api))


def test_sessions_list_and_revoke(api) -> None:
    mine = api.user_and_login("ann@example.org")
    second = api.login("ann@example.org")
    theirs = api.user_and_login("bob@example.org")
    listed = api.client.get("/v1/me/sessions", headers=mine).json()
    assert len(listed) == 2 and sum(s["current"] for s in listed) == 1
    assert all("token" not in s and s["hint"].startswith("bst_ses_...") for s in listed)
    their_id = api.client.get("/v1/me/sessions", headers=theirs).json()[0]["id"]
    # someone else's session, a personal token's id, an unknown id: 404
    token_id = api.client.post(
        "/v1/me/tokens", headers=mine, json={"name": "t", "scopes": ["read"]}
    ).json()["id"]
    for bad in (their_id, token_id, "0" * 32):
        assert api.client.delete(f"/v1/me/sessions/{bad}", headers=mine).status_code == 404
    assert status(api, theirs) == 200
    other_id = next(s["id"] for s in listed if not s["current"])
    assert api.client.delete(f"/v1/me/sessions/{other_id}", headers=mine).status_code == 204
    assert status(api, second) == 401 and status(api, mine) == 200
    third = api.login("ann@example.org")
    everyone = api.client.delete("/v1/me/sessions", headers=mine)
    assert everyone.status_code == 200 and everyone.json() == {"revoked": 1}
    assert status(api, third) == 401 and status(api, mine) == 200
    assert [s["current"] for s in api.client.get("/v1/me/sessions", headers=mine).json()] == [True]


NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LIMIT = dt.timedelta(seconds=limits.REAUTH_MAX_AGE_SECONDS)


def _p(via: Via, at: dt.datetime | None, two_factor: bool = False) -> Principal:
    return Principal(
        kind=PrincipalKind.USER, id="u", via=via, authenticated_at=at, two_factor=two_factor
    )


@pytest.mark.parametrize(
    ("principal", "totp_enabled", "fresh"),
    [
        (_p(Via.SESSION, NOW), False, True),
        (_p(Via.SESSION, NOW - LIMIT), False, True),
        (_p(Via.SESSION, NOW - LIMIT - dt.timedelta(seconds=1)), False, False),
        (_p(Via.SESSION, None), False, False),  # a session from before this revision
        (_p(Via.SESSION, NOW + dt.timedelta(seconds=5)), False, False),  # from the future
        (_p(Via.PAT, NOW), False, False),
        (_p(Via.SESSION, NOW), True, False),  # enrolled, but the proof had no 2nd factor
        (_p(Via.SESSION, NOW, two_factor=True), True, True),
    ],
)
def test_freshness_table(principal: Principal, totp_enabled: bool, fresh: bool) -> None:
    assert is_fresh(principal, NOW, totp_enabled=totp_enabled) is fresh
