"""Dashboard sign-in through OpenID Connect against a real provider (node oidc-provider).

The operator points ``oidc_redirect_uri`` at the dashboard's callback; the OIDC service
does every check (state, nonce, PKCE, the browser binding, verified e-mail) and the
dashboard turns the session it issues into its cookie.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bastion.server.auth import totp
from bastion.server.ui.security import OIDC_COOKIE, SESSION_COOKIE

from .oidckit import PASSWORD, RunningProvider, oidc_settings, sign_in_location, start_provider

pytestmark = pytest.mark.integration
DASHBOARD_CALLBACK = "http://127.0.0.1:8443/ui/oidc/callback"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProvider]:
    running = start_provider(tmp_path_factory.mktemp("oidc-provider"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(make_app: Callable[..., FastAPI], provider: RunningProvider) -> Iterator[TestClient]:
    app = make_app(**{**oidc_settings(provider), "oidc_redirect_uri": DASHBOARD_CALLBACK})
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


def _user(client: TestClient, email: str) -> None:
    from bastion.server.users import service

    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.session() as session:
        service.create_user(ctx, session, email, PASSWORD, "cli:test")


def _to_provider(client: TestClient) -> str:
    page = client.get("/ui/signin")
    assert 'id="oidc-signin"' in page.text  # the button shows when OIDC is configured
    r = client.get("/ui/oidc/login")
    assert r.status_code == 302, r.text
    assert OIDC_COOKIE in r.cookies
    return str(r.headers["location"])


def _callback_path(location: str) -> str:
    parts = urlsplit(location)
    assert parts.path == "/ui/oidc/callback", location
    return f"{parts.path}?{parts.query}"


def test_oidc_sign_in_opens_the_dashboard(client: TestClient, provider: RunningProvider) -> None:
    _user(client, "alice@example.org")
    back = _callback_path(sign_in_location(provider, _to_provider(client), "alice"))
    r = client.get(back)
    assert r.status_code == 200, r.text
    assert 'http-equiv="refresh"' in r.text and "/ui/fleets" in r.text
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/ui/fleets").status_code == 200
    # the same redirect again (a replayed state and code) is refused
    client.cookies.clear()
    again = client.get(back)
    assert again.status_code in (401, 403), again.text
    assert SESSION_COOKIE not in again.headers.get("set-cookie", "")


def test_callback_needs_the_browser_that_started(
    client: TestClient, provider: RunningProvider
) -> None:
    _user(client, "alice@example.org")
    back = _callback_path(sign_in_location(provider, _to_provider(client), "alice"))
    client.cookies.delete(OIDC_COOKIE, path="/ui")
    r = client.get(back)
    assert r.status_code in (401, 403), r.text
    assert "<script" not in r.text and SESSION_COOKIE not in r.headers.get("set-cookie", "")


def test_unverified_email_is_refused(client: TestClient, provider: RunningProvider) -> None:
    _user(client, "bob@example.org")
    r = client.get(_callback_path(sign_in_location(provider, _to_provider(client), "bob")))
    assert r.status_code in (401, 403), r.text
    assert "verified" in r.text


def test_totp_user_gives_the_second_factor(client: TestClient, provider: RunningProvider) -> None:
    _user(client, "carol@example.org")
    login = client.post(
        "/v1/auth/login", json={"email": "carol@example.org", "password": PASSWORD}
    ).json()
    headers = {"Authorization": f"Bearer {login['token']}"}
    secret = client.post("/v1/me/totp", headers=headers).json()["secret"]
    clock = client.app.state.ctx.clock  # type: ignore[attr-defined]
    step = int(clock.now().timestamp()) // 30
    confirm = client.post(
        "/v1/me/totp/confirm", json={"code": totp.code_at(secret, step)}, headers=headers
    )
    assert confirm.status_code == 200, confirm.text
    r = client.get(_callback_path(sign_in_location(provider, _to_provider(client), "carol")))
    assert r.status_code == 200 and 'id="second-factor-form"' in r.text, r.text
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    ticket = re.search(r'name="ticket" value="([^"]+)"', r.text).group(1)
    csrf = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
    clock.advance(30)
    code = totp.code_at(secret, step + 1)
    wrong = client.post(
        "/ui/oidc/second-factor", data={"ticket": ticket, "totp": code, "csrf": "x"}
    )
    assert wrong.status_code == 401 and "CSRF" in wrong.text, wrong.text
    r = client.post("/ui/oidc/second-factor", data={"ticket": ticket, "totp": code, "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/fleets", r.text
    assert client.get("/ui/fleets").status_code == 200


def test_without_oidc_the_routes_are_not_found(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(), follow_redirects=False) as plain:
        assert 'id="oidc-signin"' not in plain.get("/ui/signin").text
        assert plain.get("/ui/oidc/login").status_code == 404
        assert plain.get("/ui/oidc/callback").status_code == 404
