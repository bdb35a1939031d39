"""OIDC sign-in end to end against a real provider (npm oidc-provider) on loopback.

The provider is started once per module (oidckit.py, oidc_provider.mjs); each test
runs the bastion app on SQLite and PostgreSQL. The scripted browser signs in at the
provider and hands the redirect's ``code``/``state`` to our callback, the way a
browser or ``bastion login --oidc`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from oidckit import PASSWORD, RunningProvider, oidc_settings, sign_in, start_provider
from sqlalchemy import select

from bastion.server.audit.models import AuditEntry
from bastion.server.auth import totp


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProvider]:
    provider = start_provider(tmp_path_factory.mktemp("oidc-provider"))
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture
def oidc_client(
    make_app: Callable[..., FastAPI], oidc_provider: RunningProvider
) -> Iterator[TestClient]:
    app = make_app(**oidc_settings(oidc_provider))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def make_user(client: TestClient, email: str) -> str:
    from bastion.server.users import service

    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.session() as session:
        return service.create_user(ctx, session, email, PASSWORD, "cli:test").id


def start(client: TestClient) -> str:
    """GET /v1/auth/oidc/login; the provider URL it redirects to."""
    response = client.get("/v1/auth/oidc/login", follow_redirects=False)
    assert response.status_code == 302, response.text
    assert "bastion_oidc" in response.cookies
    return str(response.headers["location"])


def callback(client: TestClient, params: dict[str, str]) -> Any:
    return client.get("/v1/auth/oidc/callback", params=params)


def full_login(client: TestClient, provider: RunningProvider, account: str) -> Any:
    return callback(client, sign_in(provider, start(client), account))


def audit_events(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.session(write=False) as session:
        rows = session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars()
        return [(r.event, r.actor, json.loads(r.details)) for r in rows]


def with_param(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- the happy path -------------------------------------------------------------------


def test_login_issues_a_session_and_audits_it(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    user_id = make_user(oidc_client, "alice@example.org")
    url = start(oidc_client)
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["response_type"] == ["code"]
    assert len(query["state"][0]) >= 43 and len(query["nonce"][0]) >= 43
    answer = callback(oidc_client, sign_in(oidc_provider, url, "alice"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token"].startswith("bst_ses_")
    assert body["second_factor_required"] is False
    me = oidc_client.get("/v1/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200 and me.json()["email"] == "alice@example.org"
    events = audit_events(oidc_client)
    assert ("user.oidc_link", f"user:{user_id}") in [(e, a) for e, a, _ in events]
    login = [d for e, a, d in events if e == "user.login" and a == f"user:{user_id}"]
    assert login and login[-1]["method"] == "oidc"
    # the subject is linked now: a second sign-in finds the user by subject
    again = full_login(oidc_client, oidc_provider, "alice")
    assert again.status_code == 200, again.text


def test_linked_subject_wins_over_email(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    make_user(oidc_client, "alice@example.org")
    assert full_login(oidc_client, oidc_provider, "alice").status_code == 200
    # another subject of the same provider claims the same verified e-mail: refused
    twin = full_login(oidc_client, oidc_provider, "alice-twin")
    assert twin.status_code == 401, twin.text
    assert "linked to another subject" in twin.json()["detail"]


# --- refusals -------------------------------------------------------------------------


def test_wrong_nonce_is_refused(oidc_client: TestClient, oidc_provider: RunningProvider) -> None:
    make_user(oidc_client, "alice@example.org")
    url = with_param(start(oidc_client), "nonce", "an-attackers-nonce-" + "x" * 30)
    answer = callback(oidc_client, sign_in(oidc_provider, url, "alice"))
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "verification_failed"
    assert "nonce" in answer.json()["detail"]
    failed = [d for e, _a, d in audit_events(oidc_client) if e == "user.login_failed"]
    assert failed and "nonce" in failed[-1]["reason"]
    assert not [e for e, _a, _d in audit_events(oidc_client) if e == "user.login"]


def test_replayed_state_is_refused(oidc_client: TestClient, oidc_provider: RunningProvider) -> None:
    make_user(oidc_client, "alice@example.org")
    params = sign_in(oidc_provider, start(oidc_client), "alice")
    binding = oidc_client.cookies["bastion_oidc"]
    assert callback(oidc_client, params).status_code == 200
    # the callback cleared the cookie; the replay brings it back to reach the state check
    oidc_client.cookies.set("bastion_oidc", binding, path="/v1/auth/oidc")
    replay = callback(oidc_client, params)
    assert replay.status_code == 401, replay.text
    assert "already used" in replay.json()["detail"]


def test_replayed_state_is_refused_even_when_the_first_try_failed(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    make_user(oidc_client, "alice@example.org")
    params = sign_in(oidc_provider, start(oidc_client), "alice")
    binding = oidc_client.cookies["bastion_oidc"]
    bad = callback(oidc_client, {**params, "code": "not-the-code"})
    assert bad.status_code == 401, bad.text
    oidc_client.cookies.set("bastion_oidc", binding, path="/v1/auth/oidc")
    replay = callback(oidc_client, params)  # the right code, but the state is spent
    assert replay.status_code == 401, replay.text
    assert "already used" in replay.json()["detail"]


def test_replayed_code_is_refused(oidc_client: TestClient, oidc_provider: RunningProvider) -> None:
    make_user(oidc_client, "alice@example.org")
    first = sign_in(oidc_provider, start(oidc_client), "alice")
    assert callback(oidc_client, first).status_code == 200
    # a fresh, valid state of this same client, carrying the already redeemed code
    second = sign_in(oidc_provider, start(oidc_client), "alice")
    replay = callback(oidc_client, {"state": second["state"], "code": first["code"]})
    assert replay.status_code == 401, replay.text
    assert "refused the authorization code" in replay.json()["detail"]


def test_unverified_email_is_refused(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    make_user(oidc_client, "bob@example.org")
    make_user(oidc_client, "erin@example.org")
    for account in ("bob", "erin"):  # false, and the string "true"
        answer = full_login(oidc_client, oidc_provider, account)
        assert answer.status_code == 401, answer.text
        assert "verified e-mail" in answer.json()["detail"]


def test_unknown_user_is_refused_unless_invited(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    answer = full_login(oidc_client, oidc_provider, "carol")
    assert answer.status_code == 401, answer.text
    assert "no account" in answer.json()["detail"]
    owner = {"Authorization": f"Bearer {_password_login(oidc_client, 'owner@example.org')}"}
    org = oidc_client.post("/v1/orgs", headers=owner, json={"name": "acme"}).json()
    invited = oidc_client.post(
        f"/v1/orgs/{org['id']}/invitations", headers=owner, json={"email": "carol@example.org"}
    )
    assert invited.status_code == 201, invited.text
    answer = full_login(oidc_client, oidc_provider, "carol")
    assert answer.status_code == 200, answer.text
    created = [d for e, a, d in audit_events(oidc_client) if e == "user.create"]
    assert created[-1]["email"] == "carol@example.org" and created[-1]["via"] == "oidc invitation"


def test_browser_binding_cookie_is_required(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    make_user(oidc_client, "alice@example.org")
    params = sign_in(oidc_provider, start(oidc_client), "alice")
    oidc_client.cookies.clear()
    answer = callback(oidc_client, params)
    assert answer.status_code == 401, answer.text
    assert "another browser" in answer.json()["detail"]


def test_provider_error_and_missing_parameters_are_refused(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    url = start(oidc_client)
    state = parse_qs(urlsplit(url).query)["state"][0]
    denied = callback(oidc_client, {"state": state, "error": "access_denied"})
    assert denied.status_code == 401 and "access_denied" in denied.json()["detail"]
    assert callback(oidc_client, {"code": "x"}).status_code == 400
    assert callback(oidc_client, {"state": "x" * 5000, "code": "x"}).status_code == 422


# --- second factor --------------------------------------------------------------------


def _password_login(client: TestClient, email: str) -> str:
    make_user(client, email)
    answer = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


def _enrol_totp(client: TestClient, token: str) -> tuple[str, list[str]]:
    headers = {"Authorization": f"Bearer {token}"}
    secret = client.post("/v1/me/totp", headers=headers).json()["secret"]
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    step = int(ctx.clock.now().timestamp()) // 30
    confirm = client.post(
        "/v1/me/totp/confirm", headers=headers, json={"code": totp.code_at(secret, step)}
    )
    assert confirm.status_code == 200, confirm.text
    ctx.clock.advance(30)
    return str(secret), list(confirm.json()["recovery_codes"])


def test_totp_user_needs_the_second_step(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    secret, recovery = _enrol_totp(oidc_client, _password_login(oidc_client, "dave@example.org"))
    first = full_login(oidc_client, oidc_provider, "dave")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["token"] is None and body["second_factor_required"] is True
    ctx = oidc_client.app.state.ctx  # type: ignore[attr-defined]
    step = int(ctx.clock.now().timestamp()) // 30
    wrong = totp.code_at(secret, step + 5)
    refused = oidc_client.post(
        "/v1/auth/oidc/second-factor", json={"ticket": body["ticket"], "totp": wrong}
    )
    assert refused.status_code == 401, refused.text
    # the ticket was spent by the wrong code: sign in again
    again = full_login(oidc_client, oidc_provider, "dave").json()
    good = {"ticket": again["ticket"], "totp": totp.code_at(secret, step)}
    done = oidc_client.post("/v1/auth/oidc/second-factor", json=good)
    assert done.status_code == 200, done.text
    assert done.json()["two_factor"] is True and done.json()["token"].startswith("bst_ses_")
    replay = oidc_client.post("/v1/auth/oidc/second-factor", json=good)
    assert replay.status_code == 401, replay.text
    # a recovery code works too, once
    ticket = full_login(oidc_client, oidc_provider, "dave").json()["ticket"]
    body = {"ticket": ticket, "recovery_code": recovery[0]}
    assert oidc_client.post("/v1/auth/oidc/second-factor", json=body).status_code == 200
    ticket = full_login(oidc_client, oidc_provider, "dave").json()["ticket"]
    body = {"ticket": ticket, "recovery_code": recovery[0]}
    assert oidc_client.post("/v1/auth/oidc/second-factor", json=body).status_code == 401
    # and the session of an OIDC sign-in with TOTP satisfies an organisation's 2FA rule
    headers = {"Authorization": f"Bearer {done.json()['token']}"}
    org = oidc_client.post("/v1/orgs", headers=headers, json={"name": "mfa", "require_2fa": True})
    assert org.status_code == 201, org.text


# --- organisations that require OIDC -------------------------------------------------


def test_org_requiring_oidc_refuses_password_sessions(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    password_token = _password_login(oidc_client, "alice@example.org")
    password = {"Authorization": f"Bearer {password_token}"}
    org = oidc_client.post("/v1/orgs", headers=password, json={"name": "strict"}).json()
    fleet = oidc_client.post(
        f"/v1/orgs/{org['id']}/fleets", headers=password, json={"name": "f1"}
    ).json()
    # a password session may not switch it on (it would lock itself out)
    refused = oidc_client.patch(
        f"/v1/orgs/{org['id']}", headers=password, json={"require_oidc": True}
    )
    assert refused.status_code == 409, refused.text
    oidc_token = full_login(oidc_client, oidc_provider, "alice").json()["token"]
    oidc = {"Authorization": f"Bearer {oidc_token}"}
    switched = oidc_client.patch(f"/v1/orgs/{org['id']}", headers=oidc, json={"require_oidc": True})
    assert switched.status_code == 200 and switched.json()["require_oidc"] is True
    # a PAT minted by the password session is refused as well; one minted by OIDC is not
    pat_password = oidc_client.post(
        "/v1/me/tokens", headers=password, json={"name": "p", "scopes": ["read"]}
    ).json()["token"]
    pat_oidc = oidc_client.post(
        "/v1/me/tokens", headers=oidc, json={"name": "o", "scopes": ["read"]}
    ).json()["token"]
    for headers, want in (
        (password, 403),
        ({"Authorization": f"Bearer {pat_password}"}, 403),
        (oidc, 200),
        ({"Authorization": f"Bearer {pat_oidc}"}, 200),
    ):
        for path in (f"/v1/orgs/{org['id']}", f"/v1/fleets/{fleet['id']}"):
            answer = oidc_client.get(path, headers=headers)
            assert answer.status_code == want, (path, answer.text)
            if want == 403:
                assert answer.json()["error"] == "oidc_required"
    listed = oidc_client.get("/v1/fleets", headers=password).json()
    assert fleet["id"] not in [f["id"] for f in listed]


# --- another audience -----------------------------------------------------------------


def test_id_token_for_another_audience_is_refused(
    oidc_client: TestClient, oidc_provider: RunningProvider
) -> None:
    """A real ID token the provider issued to another client does not sign in here."""
    import secrets

    from bastion.errors import VerificationError
    from bastion.server.oidc.provider import OidcProvider

    other = OidcProvider(
        oidc_provider.issuer, oidc_provider.other_client_id, oidc_provider.other_client_secret
    )
    verifier, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(32)
    redirect = "http://127.0.0.1:5000/callback"
    url = other.authorization_url(
        redirect_uri=redirect, state="s" * 43, nonce=nonce, code_verifier=verifier
    )
    params = sign_in(oidc_provider, url, "alice")
    answer = other.exchange_code(code=params["code"], redirect_uri=redirect, code_verifier=verifier)
    ours = oidc_client.app.state.ctx.oidc  # type: ignore[attr-defined]
    now = oidc_client.app.state.ctx.clock.now()  # type: ignore[attr-defined]
    with pytest.raises(VerificationError, match="aud"):
        ours.verify(answer, nonce=nonce, now=now)
    # the same ID token is good for the client it was issued to (the test is not vacuous)
    theirs = OidcProvider(
        oidc_provider.issuer, oidc_provider.other_client_id, oidc_provider.other_client_secret
    )
    assert theirs.verify(answer, nonce=nonce, now=now).subject == "alice"
    theirs.close()
    # and a code issued to the other client, handed to our callback, is refused
    make_user(oidc_client, "alice@example.org")
    state = parse_qs(urlsplit(start(oidc_client)).query)["state"][0]
    url = other.authorization_url(
        redirect_uri=redirect, state="t" * 43, nonce=nonce, code_verifier=verifier
    )
    foreign = sign_in(oidc_provider, url, "alice")
    other.close()
    refused = callback(oidc_client, {"state": state, "code": foreign["code"]})
    assert refused.status_code == 401, refused.text
