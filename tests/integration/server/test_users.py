"""Users: login, sessions, personal API tokens, TOTP with recovery codes, and their audit."""

from __future__ import annotations

import pytest

from bastion.server.audit.service import list_entries
from bastion.server.auth import tokens, totp


def events(api) -> list[str]:
    with api.ctx.db.session(write=False) as session:
        return [e.event for e in list_entries(session, org_id=None, limit=500)]


def test_login_gives_session_and_me(api) -> None:
    api.user("alice@example.org")
    headers = api.login("Alice@Example.org")
    me = api.client.get("/v1/me", headers=headers).json()
    assert me["email"] == "alice@example.org"
    assert me["totp_enabled"] is False
    assert headers["Authorization"].removeprefix("Bearer ").startswith("bst_ses_")
    assert "user.login" in events(api)


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("alice@example.org", "wrong password!"),
        ("nobody@example.org", "correct horse battery"),
        ("alice@example.org", ""),
    ],
)
def test_bad_login_is_refused_and_audited(api, email, password) -> None:
    api.user("alice@example.org")
    response = api.client.post("/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code in {401, 422}
    if response.status_code == 401:
        assert response.json()["error"] == "unauthenticated"
        assert "user.login_failed" in events(api)


def test_login_rate_limited_per_address(make_app) -> None:
    from fastapi.testclient import TestClient

    app = make_app(login_rate_per_second=0.001, login_burst=3)
    with TestClient(app, raise_server_exceptions=False) as client:
        codes = [
            client.post(
                "/v1/auth/login", json={"email": "x@example.org", "password": "p" * 12}
            ).status_code
            for _ in range(5)
        ]
    assert codes[:3] == [401, 401, 401]
    assert codes[3:] == [429, 429]


def test_general_rate_limit_per_principal(make_app) -> None:
    from fastapi.testclient import TestClient

    app = make_app(rate_per_second=0.001, rate_burst=2)
    with TestClient(app, raise_server_exceptions=False) as client:
        codes = [client.get("/v1/health").status_code for _ in range(4)]
        last = client.get("/v1/health")
    assert codes == [200, 200, 429, 429]
    assert last.headers["Retry-After"].isdigit()


def test_logout_revokes_session(api) -> None:
    headers = api.user_and_login("bob@example.org")
    assert api.client.post("/v1/auth/logout", headers=headers).status_code == 204
    assert api.client.get("/v1/me", headers=headers).status_code == 401


def test_session_expires(api, clock) -> None:
    headers = api.user_and_login("bob@example.org")
    clock.advance(api.ctx.settings.session_ttl + 1)
    response = api.client.get("/v1/me", headers=headers)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_personal_token_lifecycle(api, clock) -> None:
    session = api.user_and_login("carol@example.org")
    created = api.client.post(
        "/v1/me/tokens",
        headers=session,
        json={"name": "ci", "scopes": ["read"], "expires_in_days": 2},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["token"]
    assert secret.startswith("bst_pat_")
    tokens.check_format(secret, "bst_pat_")
    pat = {"Authorization": f"Bearer {secret}"}
    assert api.client.get("/v1/me", headers=pat).status_code == 200
    # listing never shows the secret, and the secret is stored only as a hash
    listing = api.client.get("/v1/me/tokens", headers=session).json()
    assert [t["id"] for t in listing] == [body["id"]]
    assert secret not in api.client.get("/v1/me/tokens", headers=session).text
    with api.ctx.db.engine.connect() as conn:
        from sqlalchemy import text

        stored = [r[0] for r in conn.execute(text("SELECT token_hash FROM user_tokens"))]
    assert tokens.token_hash(secret) in stored and secret not in stored
    # a PAT may not mint PATs
    assert (
        api.client.post(
            "/v1/me/tokens", headers=pat, json={"name": "x", "scopes": ["admin"]}
        ).status_code
        == 403
    )
    # revoke, then refused
    assert api.client.delete(f"/v1/me/tokens/{body['id']}", headers=session).json()["revoked"]
    response = api.client.get("/v1/me", headers=pat)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert {"token.create", "token.revoke"} <= set(events(api))


def test_personal_token_expires(api, clock) -> None:
    session = api.user_and_login("carol@example.org")
    secret = api.client.post(
        "/v1/me/tokens",
        headers=session,
        json={"name": "ci", "scopes": ["read"], "expires_in_days": 1},
    ).json()["token"]
    clock.advance(86400 + 1)
    assert (
        api.client.get("/v1/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    )


@pytest.mark.parametrize(
    "header",
    [
        "Bearer bst_pat_" + "A" * 49,  # bad checksum
        "Bearer bst_ses_short",
        "Bearer bst_zzz_" + "A" * 49,  # unknown prefix
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer " + "x" * 500,
    ],
)
def test_malformed_credentials_are_401(api, header) -> None:
    response = api.client.get("/v1/me", headers={"Authorization": header})
    assert response.status_code == 401


def test_wellformed_unknown_token_is_401(api) -> None:
    token, _ = tokens.new_token("bst_pat_")
    assert api.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_totp_enrolment_login_replay_and_recovery(api, clock) -> None:
    session = api.user_and_login("dave@example.org")
    begin = api.client.post("/v1/me/totp", headers=session).json()
    assert begin["uri"].startswith("otpauth://totp/")
    secret = begin["secret"]
    step = int(clock.now().timestamp()) // 30
    bad = api.client.post("/v1/me/totp/confirm", headers=session, json={"code": "000000"})
    if totp.code_at(secret, step) != "000000":
        assert bad.status_code in {401, 403}
    confirm = api.client.post(
        "/v1/me/totp/confirm", headers=session, json={"code": totp.code_at(secret, step)}
    )
    assert confirm.status_code == 200, confirm.text
    codes = confirm.json()["recovery_codes"]
    assert len(codes) == 10
    # password alone is not enough any more
    response = api.client.post(
        "/v1/auth/login", json={"email": "dave@example.org", "password": "correct horse battery"}
    )
    assert response.status_code == 401
    assert "second factor" in response.json()["detail"]
    # the code used for enrolment cannot be replayed
    replay = api.client.post(
        "/v1/auth/login",
        json={
            "email": "dave@example.org",
            "password": "correct horse battery",
            "totp": totp.code_at(secret, step),
        },
    )
    assert replay.status_code == 401
    clock.advance(30)
    good = api.login("dave@example.org", totp=totp.code_at(secret, step + 1))
    assert api.client.get("/v1/me", headers=good).json()["totp_enabled"] is True
    # a recovery code works once
    rc = api.login("dave@example.org", recovery_code=codes[0].lower())
    assert api.client.get("/v1/me", headers=rc).status_code == 200
    again = api.client.post(
        "/v1/auth/login",
        json={
            "email": "dave@example.org",
            "password": "correct horse battery",
            "recovery_code": codes[0],
        },
    )
    assert again.status_code == 401
    assert {"user.totp_enable", "user.recovery_code_used"} <= set(events(api))


def test_signup_disabled_by_default(api) -> None:
    response = api.client.post(
        "/v1/auth/signup", json={"email": "e@example.org", "password": "p" * 12}
    )
    assert response.status_code == 401


def test_signup_when_enabled(make_app) -> None:
    from fastapi.testclient import TestClient

    app = make_app(allow_signup=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        ok = client.post("/v1/auth/signup", json={"email": "e@example.org", "password": "p" * 12})
        dup = client.post("/v1/auth/signup", json={"email": "E@example.org", "password": "p" * 12})
        short = client.post("/v1/auth/signup", json={"email": "f@example.org", "password": "short"})
    assert ok.status_code == 201
    assert dup.status_code == 409
    assert short.status_code == 400
