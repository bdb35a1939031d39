"""A real OpenID provider on loopback for the OIDC tests, and a scripted user agent.

:func:`ensure_oidc_provider` installs the npm package ``oidc-provider`` (pinned to
:data:`OIDC_PROVIDER_VERSION`) on first use into ``~/.cache/bastion-test-npm/``
(``$BASTION_TEST_NPM_CACHE`` overrides), with ``npm install --no-audit --no-fund``,
outside the repository; later runs reuse it. Node.js and npm come from the system
packages (scripts/system-packages.txt). A failed install fails the tests: they never
skip.

:func:`start_provider` runs ``oidc_provider.mjs`` (next to this file) with node on a free
loopback port, with clients, accounts and a signing key made here (so the tests also
hold the provider's private key to forge tokens for the negative tables), and stops it
by PID. :func:`sign_in` plays the browser: it follows the provider's redirects,
chooses the account at the interaction step, and returns the redirect to our callback.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

OIDC_PROVIDER_VERSION = "9.13.3"
HERE = Path(__file__).parent
SCRIPT = HERE / "oidc_provider.mjs"
SERVER_CALLBACK = "http://127.0.0.1:8443/v1/auth/oidc/callback"
PASSWORD = "correct horse battery"

#: the test accounts at the provider (sub -> claims)
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.org", "email_verified": True},
    "bob": {"email": "bob@example.org", "email_verified": False},
    "carol": {"email": "carol@example.org", "email_verified": True},
    "dave": {"email": "dave@example.org", "email_verified": True},
    "alice-twin": {"email": "alice@example.org", "email_verified": True},
    "erin": {"email": "erin@example.org", "email_verified": "true"},
}


def npm_cache() -> Path:
    return Path(
        os.environ.get("BASTION_TEST_NPM_CACHE", Path.home() / ".cache" / "bastion-test-npm")
    )


def ensure_oidc_provider() -> Path:
    """The entry module of oidc-provider, installed on first use; RuntimeError on failure."""
    cache = npm_cache()
    target = cache / f"oidc-provider-{OIDC_PROVIDER_VERSION}"
    entry = target / "node_modules" / "oidc-provider" / "lib" / "index.js"
    if entry.is_file():
        return entry
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (scripts/system-packages.txt)")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if entry.is_file():
            return entry
        work = Path(tempfile.mkdtemp(dir=cache, prefix=".install-"))
        (work / "package.json").write_text('{"private": true}\n')
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", f"oidc-provider@{OIDC_PROVIDER_VERSION}"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"npm install oidc-provider failed: {done.stderr[-2000:]}")
        work.rename(target)
    return entry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _client(client_id: str, secret: str) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "client_secret": secret,
        # native: a loopback redirect URI matches on any port (RFC 8252 7.3)
        "application_type": "native",
        "redirect_uris": [
            "http://127.0.0.1/v1/auth/oidc/callback",
            "http://127.0.0.1/ui/oidc/callback",  # the dashboard's (test_dashboard_oidc.py)
            "http://127.0.0.1/callback",
        ],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }


@dataclass
class RunningProvider:
    issuer: str
    client_id: str
    client_secret: str
    other_client_id: str
    other_client_secret: str
    #: the provider's private signing key (JWK), to forge tokens in negative tests
    private_jwk: dict[str, Any]
    process: subprocess.Popen[str]
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_provider(workdir: Path) -> RunningProvider:
    """oidc-provider on a free loopback port; the caller stops it (``.stop()``)."""
    from authlib.jose import JsonWebKey

    entry = ensure_oidc_provider()
    port = free_port()
    key = JsonWebKey.generate_key("RSA", 2048, is_private=True)
    private = key.as_dict(is_private=True)
    private.update({"kid": f"test-{secrets.token_hex(4)}", "use": "sig", "alg": "RS256"})
    secret, other_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    config = {
        "module": entry.as_uri(),
        "port": port,
        "clients": [_client("bastion", secret), _client("other-app", other_secret)],
        "jwks": {"keys": [private]},
        "accounts": ACCOUNTS,
    }
    log = workdir / "oidc-provider.log"
    env = {**os.environ, "BASTION_OIDC_CONFIG": json.dumps(config)}
    with open(log, "w") as err:
        process = subprocess.Popen(
            ["node", str(SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            text=True,
            cwd=workdir,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until it listens or dies
    if not line.startswith("listening "):
        process.kill()
        process.wait(timeout=5)
        raise RuntimeError(f"oidc-provider did not start: {line!r} {log.read_text()[-2000:]}")
    issuer = line.split(" ", 1)[1].strip()
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(issuer + "/.well-known/openid-configuration", timeout=2).raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
    return RunningProvider(
        issuer=issuer,
        client_id="bastion",
        client_secret=secret,
        other_client_id="other-app",
        other_client_secret=other_secret,
        private_jwk=private,
        process=process,
        log=log,
    )


def oidc_settings(provider: RunningProvider) -> dict[str, Any]:
    """ServerSettings overrides that point an app at ``provider``."""
    return {
        "oidc_issuer": provider.issuer,
        "oidc_client_id": provider.client_id,
        "oidc_client_secret": provider.client_secret,
        "oidc_redirect_uri": SERVER_CALLBACK,
    }


def sign_in(provider: RunningProvider, authorization_url: str, account: str) -> dict[str, str]:
    """Play the browser at the provider; the query parameters it redirects back with."""
    query = parse_qs(urlsplit(sign_in_location(provider, authorization_url, account)).query)
    return {k: v[0] for k, v in query.items()}


def sign_in_location(provider: RunningProvider, authorization_url: str, account: str) -> str:
    """Play the browser at the provider; the URL it finally redirects to (our callback)."""
    url = authorization_url
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        for _ in range(10):
            if url.startswith(provider.issuer + "/interaction/"):
                url += ("&" if "?" in url else "?") + f"account={account}"
            response = browser.get(url)
            if response.status_code not in (302, 303):
                raise AssertionError(
                    f"provider answered {response.status_code} at {url}: {response.text[:300]}"
                )
            location = str(response.headers["location"])
            if location.startswith("/"):
                location = provider.issuer + location
            if not location.startswith(provider.issuer):
                return location
            url = location
    raise AssertionError("the provider redirected more than 10 times")
