"""``bastion login --oidc`` end to end: CLI process, served app, real provider, browser.

uvicorn serves an app with OIDC configured in a thread; the CLI runs as its own
process (as an operator would run it), prints the provider URL, and listens on a
loopback port; the scripted browser signs in at the provider and follows the redirect
to that port; the CLI finishes the sign-in and stores the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from oidckit import (
    PASSWORD,
    RunningProvider,
    free_port,
    oidc_settings,
    sign_in_location,
    start_provider,
)

import bastion

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProvider]:
    provider = start_provider(tmp_path_factory.mktemp("oidc-provider"))
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture
def served(make_app, oidc_provider: RunningProvider) -> Iterator[tuple[str, object]]:
    app = make_app(**oidc_settings(oidc_provider))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/v1/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _enrol_totp(url: str, app: object, email: str) -> str:
    """Enrol TOTP for ``email`` over HTTP; a code valid for the next login."""
    from bastion.server.auth import totp

    ctx = app.state.ctx  # type: ignore[attr-defined]
    login = httpx.post(f"{url}/v1/auth/login", json={"email": email, "password": PASSWORD})
    headers = {"Authorization": f"Bearer {login.json()['token']}"}
    secret = httpx.post(f"{url}/v1/me/totp", headers=headers).json()["secret"]
    step = int(ctx.clock.now().timestamp()) // 30
    confirm = httpx.post(
        f"{url}/v1/me/totp/confirm", headers=headers, json={"code": totp.code_at(secret, step)}
    )
    assert confirm.status_code == 200, confirm.text
    ctx.clock.advance(30)
    return str(totp.code_at(secret, step + 1))


@pytest.mark.parametrize("with_totp", [False, True], ids=["password-less", "totp"])
def test_cli_login_oidc(
    served, oidc_provider: RunningProvider, tmp_path: Path, with_totp: bool
) -> None:
    url, app = served
    from bastion.server.users import service

    email, account = ("dave@example.org", "dave") if with_totp else ("alice@example.org", "alice")
    ctx = app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.session() as session:
        service.create_user(ctx, session, email, PASSWORD, "cli:test")
    extra = ["--totp", _enrol_totp(url, app, email)] if with_totp else []
    config = tmp_path / "operator.json"
    env = {
        **os.environ,
        "BASTION_CONFIG": str(config),
        "PYTHONPATH": str(Path(bastion.__file__).parents[1]),
    }
    env.pop("BASTION_SERVER", None)
    env.pop("BASTION_TOKEN", None)
    argv = ["login", "--oidc", "--server", url, "--json", *extra]
    cli = subprocess.Popen(
        [sys.executable, "-m", "bastion.cli.main", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert cli.stderr is not None
        first = cli.stderr.readline()
        assert first.startswith("Open this URL"), first + cli.stderr.read()
        authorization_url = cli.stderr.readline().strip()
        assert authorization_url.startswith(oidc_provider.issuer + "/auth?")
        location = sign_in_location(oidc_provider, authorization_url, account)
        assert location.startswith("http://127.0.0.1:") and "/callback?" in location
        page = httpx.get(location, timeout=10)  # the browser arrives at the CLI's listener
        assert page.status_code == 200 and b"Sign-in received" in page.content
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=5)
    assert cli.returncode == 0, err
    assert json.loads(out)["email"] == email
    stored = json.loads(config.read_text())
    assert stored["token"].startswith("bst_ses_")
    me = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {stored['token']}"})
    assert me.status_code == 200 and me.json()["email"] == email
