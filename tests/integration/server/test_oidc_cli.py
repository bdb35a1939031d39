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


def test_cli_login_oidc(served, oidc_provider: RunningProvider, tmp_path: Path) -> None:
    url, app = served
    from bastion.server.users import service

    ctx = app.state.ctx  # type: ignore[attr-defined]
    with ctx.db.session() as session:
        service.create_user(ctx, session, "alice@example.org", PASSWORD, "cli:test")
    config = tmp_path / "operator.json"
    env = {
        **os.environ,
        "BASTION_CONFIG": str(config),
        "PYTHONPATH": str(Path(bastion.__file__).parents[1]),
    }
    env.pop("BASTION_SERVER", None)
    env.pop("BASTION_TOKEN", None)
    cli = subprocess.Popen(
        [sys.executable, "-m", "bastion.cli.main", "login", "--oidc", "--server", url, "--json"],
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
        location = sign_in_location(oidc_provider, authorization_url, "alice")
        assert location.startswith("http://127.0.0.1:") and "/callback?" in location
        page = httpx.get(location, timeout=10)  # the browser arrives at the CLI's listener
        assert page.status_code == 200 and b"Sign-in received" in page.content
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=5)
    assert cli.returncode == 0, err
    assert json.loads(out)["email"] == "alice@example.org"
    stored = json.loads(config.read_text())
    assert stored["token"].startswith("bst_ses_")
    me = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {stored['token']}"})
    assert me.status_code == 200 and me.json()["email"] == "alice@example.org"
