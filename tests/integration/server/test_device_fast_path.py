"""The heartbeat routes' second request path answers exactly as the FastAPI path (ADR 0043).

Two apps on one database: ``fast`` (``device_fast_path`` on, the default) and ``slow``
(off: FastAPI alone). Every case goes through both and must give the same status,
headers and body bytes; the fast app's layer counts what it answered itself, so each
case also says which path it must take. Negative cases first: bad, unknown, revoked or
deleted credentials, users, never/failed/stale attestation, the rate limit, a
signed-only server; then success; then requests the layer must leave to FastAPI (HEAD,
POST, trailing slash, query string, percent-encoding, signatures, bodies, two
credentials), whose answers must be the same too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.middleware.exceptions import ExceptionMiddleware

from bastion.server.app import create_app
from bastion.server.attestation.models import DEFAULT_INTERVAL
from bastion.server.auth import tokens
from bastion.server.hotpath import DeviceHotPath, hot_route, hot_routes
from bastion.server.provisioning.policy import DEVICE_KEY_PREFIX, PROVISIONING_PREFIX
from bastion.server.settings import ServerSettings
from bastion.tpm.software import SoftwareTpm

from .conftest import CHEAP
from .devicekit import FleetWorld, revoke_or_delete
from .test_attestation import Dev, attested_world_fixture

pytestmark = pytest.mark.integration

ROUTES = ("/v1/device", "/v1/device/config", "/v1/device/target-release")
METRICS_TOKEN = "m" * 40


world = attested_world_fixture("fastpath", webhook_worker=False)


def layer_of(app: Any) -> DeviceHotPath | None:
    """The app's fast-path layer, if its middleware stack has one."""
    node = app.middleware_stack
    for _ in range(50):
        if isinstance(node, DeviceHotPath):
            return node
        node = getattr(node, "app", None)
        if node is None:
            return None
    raise AssertionError("middleware stack deeper than 50")


@dataclass
class Pair:
    fast: TestClient
    slow: TestClient

    @property
    def layer(self) -> DeviceHotPath:
        found = layer_of(self.fast.app)
        assert found is not None
        return found

    def both(self, method: str, path: str, **kw: Any) -> tuple[Any, bool]:
        """The answer of both apps (slow first), asserted identical, and whether the
        fast app's layer answered it itself."""
        kw.setdefault("follow_redirects", False)  # a redirect is an answer of its own
        slow = self.slow.request(method, path, **kw)
        before = self.layer.answered
        fast = self.fast.request(method, path, **kw)
        taken = self.layer.answered - before
        assert taken in (0, 1)
        assert (fast.status_code, sorted(fast.headers.multi_items()), fast.content) == (
            slow.status_code,
            sorted(slow.headers.multi_items()),
            slow.content,
        ), (method, path)
        return fast, taken == 1


def _pair(world: FleetWorld, **settings: Any) -> Iterator[Pair]:
    """A fast and a slow app on the world's database, clock and data folder."""
    apps: list[FastAPI] = []
    for fast in (True, False):
        options = {**CHEAP, "metrics_token": METRICS_TOKEN, **settings}
        apps.append(
            create_app(
                ServerSettings(
                    data_dir=world.ctx.settings.data_dir,
                    database_url=world.ctx.db.url,
                    webhook_worker=False,
                    device_fast_path=fast,
                    # the pair compares the fast path with FastAPI on every request;
                    # the answer cache is compared with the full path in its own tests
                    device_answer_cache=False,
                    **options,
                ),
                clock=world.ctx.clock,
                migrate=False,
            )
        )
    try:
        with (
            TestClient(apps[0], raise_server_exceptions=False) as fast_client,
            TestClient(apps[1], raise_server_exceptions=False) as slow_client,
        ):
            fast_client.get("/v1/health")  # builds the middleware stack
            slow_client.get("/v1/health")
            yield Pair(fast_client, slow_client)
    finally:
        for app in apps:
            app.state.ctx.db.dispose()


@pytest.fixture(scope="module")
def pair(world: FleetWorld) -> Iterator[Pair]:
    yield from _pair(world)


def _check(pair: Pair, headers: dict[str, str], expected: dict[str, tuple[int, str, bool]]) -> None:
    """Each route's answer through both apps: (status, error code or "", fast path taken)."""
    got = {}
    for path in ROUTES:
        answer, taken = pair.both("GET", path, headers=headers)
        code = answer.json().get("error", "") if answer.status_code != 200 else ""
        got[path] = (answer.status_code, code, taken)
    assert got == expected


def _all(status: int, code: str, taken: bool) -> dict[str, tuple[int, str, bool]]:
    return {p: (status, code, taken) for p in ROUTES}


# --- the layer's place ----------------------------------------------------------------------


def test_the_layer_is_the_innermost_middleware_and_off_when_asked(pair: Pair) -> None:
    assert isinstance(pair.layer.app, ExceptionMiddleware)
    assert layer_of(pair.slow.app) is None
    assert set(pair.layer.routes) == set(ROUTES)


# --- negative cases ---------------------------------------------------------------------------


# the unknown key is random: the tests are named by case, so that pytest-xdist's workers
# collect the same test ids
BAD_CREDENTIALS: list[tuple[str, str | None, int, str, bool]] = [
    ("none", None, 401, "unauthenticated", False),
    ("basic", "Basic Zm9vOmJhcg==", 401, "unauthenticated", False),
    ("empty bearer", "Bearer ", 401, "unauthenticated", False),
    ("bad checksum", "Bearer bst_dev_" + "A" * 49, 401, "unauthenticated", True),
    ("short", "Bearer bst_dev_x", 401, "unauthenticated", True),
    ("too long", "Bearer bst_dev_" + "A" * 5000, 401, "unauthenticated", True),
    ("unknown key", "Bearer " + tokens.new_token(DEVICE_KEY_PREFIX)[0], 401,
     "unauthenticated", True),
    ("bad characters", "Bearer bst_dev_" + "!" * 49, 401, "unauthenticated", True),
    ("provisioning key prefix", "Bearer bst_pk_" + "A" * 49, 401, "unauthenticated",
     False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "authorization", "status", "code", "taken"),
    BAD_CREDENTIALS,
    ids=[case[0] for case in BAD_CREDENTIALS],
)
def test_bad_credentials_are_refused_alike(
    pair: Pair, name: str, authorization: str | None, status: int, code: str, taken: bool
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    _check(pair, headers, _all(status, code, taken))


@pytest.mark.parametrize("role", ["admin", "viewer", "expired"])
def test_user_tokens_are_left_to_fastapi_and_refused_alike(
    world: FleetWorld, pair: Pair, role: str
) -> None:
    status, code = (401, "unauthenticated") if role == "expired" else (403, "forbidden")
    _check(pair, world.headers[role], _all(status, code, False))


@pytest.mark.parametrize("how", ["revoke", "delete"])
def test_a_revoked_or_deleted_devices_key_is_refused_alike(
    world: FleetWorld, pair: Pair, tmp_path: Path, how: str
) -> None:
    dev = Dev(world, tmp_path, f"fast-{how}")
    assert dev.attest()["ok"]
    _check(pair, dev.headers, _all(200, "", True))
    revoke_or_delete(world, dev.identity.device_id, how)
    _check(pair, dev.headers, _all(401, "unauthenticated", True))


def _flip(text: str, at: int) -> str:
    """``text`` with the character at ``at`` replaced by another of the token alphabet."""
    return text[:at] + ("C" if text[at] == "B" else "B") + text[at + 1 :]


@pytest.mark.parametrize(
    ("name", "change", "taken"),
    [
        ("random part", lambda k: _flip(k, len(DEVICE_KEY_PREFIX)), True),
        ("checksum", lambda k: _flip(k, len(k) - 1), True),
        ("provisioning prefix", lambda k: PROVISIONING_PREFIX + k[len(DEVICE_KEY_PREFIX) :], False),
        ("upper-case prefix", lambda k: DEVICE_KEY_PREFIX.upper() + k[len(DEVICE_KEY_PREFIX) :],
         False),
        ("one character short", lambda k: k[:-1], True),
    ],
)  # fmt: skip
def test_a_live_devices_key_changed_in_one_place_is_refused_alike(
    world: FleetWorld, pair: Pair, tmp_path: Path, name: str, change: Any, taken: bool
) -> None:
    dev = Dev(world, tmp_path, f"fast-tamper-{name.replace(' ', '-')}")
    assert dev.attest()["ok"]
    _check(pair, dev.headers, _all(200, "", True))  # the key itself is good
    key = dev.headers["Authorization"].removeprefix("Bearer ")
    assert key.startswith(DEVICE_KEY_PREFIX)
    changed = change(key)
    assert changed != key
    _check(pair, {"Authorization": f"Bearer {changed}"}, _all(401, "unauthenticated", taken))


def test_a_device_of_a_deleted_fleet_is_refused_alike(
    world: FleetWorld, pair: Pair, tmp_path: Path
) -> None:
    owner = world.headers["owner"]
    made = world.client.post(
        f"/v1/orgs/{world.org_id}/fleets",
        json={"name": "fast-doomed", "ek_policy": "any"},
        headers=owner,
    )
    assert made.status_code == 201, made.text
    fleet_id = made.json()["id"]
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    key = world.create_key("owner", fleet_id=fleet_id)
    identity = world.enrol(tpm, key, serial="fast-doomed-1")
    headers = world.device_headers(identity, tpm)
    answer, taken = pair.both("GET", "/v1/device", headers=headers)
    assert (answer.status_code, answer.json()["fleet_id"], taken) == (200, fleet_id, True)
    gone = world.client.delete(f"/v1/fleets/{fleet_id}", headers=owner)
    assert gone.status_code == 204, gone.text
    _check(pair, headers, _all(401, "unauthenticated", True))


def test_never_attested_and_failed_devices_meet_the_gate_alike(
    world: FleetWorld, pair: Pair, tmp_path: Path
) -> None:
    gated = {"/v1/device/config", "/v1/device/target-release"}
    never = Dev(world, tmp_path / "never", "fast-never")
    expected = {
        p: (403, "attestation_required", True) if p in gated else (200, "", True) for p in ROUTES
    }
    _check(pair, never.headers, expected)
    failed = Dev(world, tmp_path / "failed", "fast-failed")
    assert not failed.attest({"selinux": "permissive", "randomize_va_space": 2})["ok"]
    _check(pair, failed.headers, expected)


def test_a_stale_verdict_meets_the_gate_alike(
    world: FleetWorld, pair: Pair, tmp_path: Path
) -> None:
    dev = Dev(world, tmp_path, "fast-stale")
    assert dev.attest()["ok"]
    world.ctx.clock.advance(DEFAULT_INTERVAL + 1)
    _check(
        pair,
        dev.headers,
        {
            "/v1/device": (200, "", True),
            "/v1/device/config": (403, "attestation_required", True),
            "/v1/device/target-release": (403, "attestation_required", True),
        },
    )


def test_the_rate_limit_bites_alike(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "fast-rate")
    assert dev.attest()["ok"]
    limits = {"rate_per_second": 0.001, "rate_burst": 2, "rate_limit_backend": "memory"}
    for rate in _pair(world, **limits):
        key = f"device:{dev.identity.device_id}"
        for path in ROUTES:  # burst 2: two answers, then 429 with Retry-After
            for client in (rate.fast, rate.slow):
                client.app.state.ctx.limiter.reset(key)  # type: ignore[attr-defined]
            answers = [rate.both("GET", path, headers=dev.headers) for _ in range(3)]
            assert [(a.status_code, taken) for a, taken in answers] == [
                (200, True),
                (200, True),
                (429, True),
            ], path
            assert answers[2][0].json()["error"] == "rate_limited"
            assert "retry-after" in answers[2][0].headers


def test_a_signed_only_server_refuses_device_keys_alike(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "fast-signed-only")
    assert dev.attest()["ok"]
    for signed in _pair(world, require_signed_device_requests=True):
        _check(signed, dev.headers, _all(401, "unauthenticated", True))
        answer, _ = signed.both("GET", "/v1/device", headers=dev.headers)
        assert "only signed device requests" in answer.json()["detail"]


# --- success ---------------------------------------------------------------------------------


def test_an_attested_device_gets_the_same_bytes(
    world: FleetWorld, pair: Pair, tmp_path: Path
) -> None:
    dev = Dev(world, tmp_path, "fast-ok")
    assert dev.attest()["ok"]
    _check(pair, dev.headers, _all(200, "", True))
    world.ctx.clock.advance(61)  # last_seen_at is stale: the first answer writes it
    _check(pair, dev.headers, _all(200, "", True))
    answer, _ = pair.both("GET", "/v1/device", headers=dev.headers)
    assert answer.json()["id"] == dev.identity.device_id
    config, _ = pair.both("GET", "/v1/device/config", headers=dev.headers)
    assert config.json()["config"] == {"target_release": "1.2.3", "mode": "prod"}


def _requests_by_route(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    found = {}
    for line in text.splitlines():
        m = re.match(r"bastion_http_requests_total\{(.*)\} (\S+)$", line)
        if m and "/v1/device" in m.group(1):
            found[m.group(1)] = float(m.group(2))
    return found


def test_fast_requests_are_counted_in_the_metrics_alike(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "fast-metrics")
    assert dev.attest()["ok"]
    for fresh in _pair(world):
        for path in ROUTES:
            fresh.both("GET", path, headers=dev.headers)
            fresh.both("GET", path, headers={"Authorization": "Bearer bst_dev_x"})
        counted = _requests_by_route(fresh.fast)
        assert counted == _requests_by_route(fresh.slow)
        for path in ROUTES:
            for status in ("200", "401"):
                assert counted[f'method="GET",route="{path}",status="{status}"'] == 1.0


# --- what the layer must leave to FastAPI ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "method", "suffix", "extra"),
    [
        ("HEAD", "HEAD", "", {}),
        ("POST", "POST", "", {}),
        ("PUT", "PUT", "", {}),
        ("trailing slash", "GET", "/", {}),
        ("query string", "GET", "?verbose=1", {}),
        ("signature", "GET", "", {"headers": {"Signature-Input": 'sig=("@method")'}}),
        ("content digest", "GET", "", {"headers": {"Content-Digest": "sha-256=:x:"}}),
        ("body", "GET", "", {"content": b"{}"}),
    ],
)
def test_requests_the_layer_is_not_sure_of_go_to_fastapi(
    world: FleetWorld, pair: Pair, tmp_path: Path, name: str, method: str, suffix: str,
    extra: dict[str, Any],
) -> None:  # fmt: skip
    dev = Dev(world, tmp_path, f"fast-through-{name.replace(' ', '-')}")
    assert dev.attest()["ok"]
    for path in ROUTES:
        headers = {**dev.headers, **extra.get("headers", {})}
        content = extra.get("content")
        _, taken = pair.both(method, path + suffix, headers=headers, content=content)
        assert not taken, (name, path)


def test_percent_encoding_two_credentials_and_a_lowercase_scheme_go_to_fastapi(
    world: FleetWorld, pair: Pair, tmp_path: Path
) -> None:
    dev = Dev(world, tmp_path, "fast-through-odd")
    assert dev.attest()["ok"]
    key = dev.headers["Authorization"].removeprefix("Bearer ")
    answer, taken = pair.both("GET", "/v1/device/%63onfig", headers=dev.headers)
    assert not taken
    two = [("Authorization", f"Bearer {key}"), ("Authorization", f"Bearer {key}")]
    for path in ROUTES:
        answer, taken = pair.both("GET", path, headers=two)
        assert not taken, path
        answer, taken = pair.both("GET", path, headers={"Authorization": f"bearer {key}"})
        assert (answer.status_code, taken) == (200, False), path
    answer, taken = pair.both("GET", "/v1/device", headers=dev.headers)
    assert (answer.status_code, taken) == (200, True)  # the same key, as the layer takes it


# --- the recogniser on its own (scopes no test client can make) ------------------------------


def _scope(**over: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/v1/device/config",
        "raw_path": b"/v1/device/config",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer bst_dev_" + b"A" * 49)],
    }
    scope.update(over)
    return scope


@pytest.mark.parametrize(
    ("name", "over"),
    [
        ("mTLS client certificate",
         {"extensions": {"tls": {"client_cert_chain": ["-----BEGIN CERTIFICATE-----"]}}}),
        ("any TLS extension", {"extensions": {"tls": {"server_cert": None}}}),
        ("root path", {"root_path": "/api"}),
        ("no raw path", {"raw_path": None}),
        ("encoded raw path", {"raw_path": b"/v1/device/%63onfig"}),
        ("websocket", {"type": "websocket"}),
        ("query", {"query_string": b"a=1"}),
        ("chunked body", {"headers": [(b"authorization", b"Bearer bst_dev_x"),
                                      (b"transfer-encoding", b"chunked")]}),
        ("content length", {"headers": [(b"authorization", b"Bearer bst_dev_x"),
                                        (b"content-length", b"2")]}),
        ("no authorization", {"headers": []}),
        ("unknown path", {"path": "/v1/devices", "raw_path": b"/v1/devices"}),
    ],
)  # fmt: skip
def test_the_recogniser_refuses_what_it_is_not_sure_of(name: str, over: dict[str, Any]) -> None:
    routes = hot_routes()
    assert hot_route(_scope(), routes) is routes["/v1/device/config"]  # the baseline is taken
    assert hot_route(_scope(**over), routes) is None, name


def test_the_recogniser_takes_an_empty_body_announced_as_such() -> None:
    routes = hot_routes()
    headers = [(b"authorization", b"Bearer bst_dev_x"), (b"content-length", b"0")]
    assert hot_route(_scope(headers=headers), routes) is routes["/v1/device/config"]
