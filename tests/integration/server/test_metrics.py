"""Prometheus metrics: who may scrape, values that match the API, bounded labels, per app.

Scrapes are parsed with ``prometheus_client.parser.text_string_to_metric_families``;
device counts are compared with what the fleet API lists. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bastion.tpm.software import SoftwareTpm

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration
TOKEN = secrets.token_urlsafe(32)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetWorld]:
    with shared_world(request.param, tmp_path_factory.mktemp("metrics"), metrics_token=TOKEN) as w:
        yield w


def scrape(
    client: TestClient, headers: dict[str, str] | None = None
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted labels: value}}`` of one authorised scrape."""
    response = client.get("/metrics", headers=headers or {"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict[str, Any], name: str, **labels: str) -> float:
    return float(metrics[name][tuple(sorted(labels.items()))])


def test_values_match_the_api(world: FleetWorld, tmp_path: Path) -> None:
    c = world.client
    before = scrape(c)
    keys = [world.create_key() for _ in range(3)]
    devices = [
        world.enrol(SoftwareTpm(tmp_path / f"tpm{i}"), keys[i], serial=f"m-{i}") for i in range(3)
    ]
    revoke = c.post(
        f"/v1/fleets/{world.fleet_id}/devices/{devices[0].device_id}/revoke",
        headers=world.headers["operator"],
    )
    assert revoke.status_code == 200
    bad = c.post("/v1/auth/login", json={"email": "viewer@example.com", "password": "wrong!"})
    assert bad.status_code == 401
    good = c.post(
        "/v1/auth/login", json={"email": "viewer@example.com", "password": "correct horse battery"}
    )
    assert good.status_code == 200
    after = scrape(c)
    listed: list[dict[str, Any]] = []
    for fleet in (world.fleet_id, world.other_fleet_id):
        answer = c.get(f"/v1/fleets/{fleet}/devices", headers=world.headers["owner"])
        assert answer.status_code == 200, answer.text
        listed += answer.json()
    for state in ("active", "revoked"):
        assert value(after, "bastion_devices", state=state) == sum(
            1 for d in listed if d["status"] == state
        )
    assert value(after, "bastion_devices", state="revoked") >= 1
    grew = {
        ("bastion_enrolments_total", "success"): 3,
        ("bastion_logins_total", "failure"): 1,
        ("bastion_logins_total", "success"): 1,
    }
    for (name, result), delta in grew.items():
        assert value(after, name, result=result) - value(before, name, result=result) == delta
    # the audit counter is the chain head: compare with the audit log itself
    events = world.audit_events()
    assert value(after, "bastion_audit_entries_total") == len(events)


def test_latency_is_labelled_by_route_template(world: FleetWorld) -> None:
    c = world.client
    for _ in range(3):
        c.get(f"/v1/fleets/{secrets.token_hex(8)}", headers=world.headers["owner"])
        c.get(f"/no/such/{secrets.token_hex(8)}")
    scrape(c)
    metrics = scrape(c)  # the first scrape is counted in the second
    counts = metrics["bastion_http_request_duration_seconds_count"]
    routes = {dict(labels)["route"] for labels in counts}
    assert "/v1/fleets/{fleet_id}" in routes
    assert "<unmatched>" in routes
    assert not any(r.startswith("/no/such") or len(r.split("/")) > 8 for r in routes)
    assert (
        value(
            metrics,
            "bastion_http_request_duration_seconds_count",
            method="GET",
            route="/v1/fleets/{fleet_id}",
        )
        >= 3
    )
    assert (
        value(
            metrics,
            "bastion_http_requests_total",
            method="GET",
            route="/v1/fleets/{fleet_id}",
            status="404",
        )
        >= 3
    )
    # every route template label is one the app has (bounded cardinality)
    templates = {
        r.path_format
        for r in iter_route_contexts(c.app.routes)  # type: ignore[attr-defined]
        if r.path_format
    }
    assert routes <= templates | {"<unmatched>"}
    assert "/metrics" in routes


def test_nested_routers_get_their_route_templates(world: FleetWorld, tmp_path: Path) -> None:
    """Routes of included (nested) routers: device, user and dashboard ones, each labelled
    with its full template, counted per request (the FastAPI of the lock file nests
    included routers, so ``app.routes`` alone has no templates for them)."""
    c = world.client
    tpm = SoftwareTpm(tmp_path / "tpm")
    device = world.enrol(tpm, world.create_key(), serial="metrics-nested")
    dev = world.device_headers(device, tpm)
    before = scrape(c)
    calls = [
        ("GET", "/v1/device", c.get("/v1/device", headers=dev), 200),
        ("GET", "/v1/device/config", c.get("/v1/device/config", headers=dev), 200),
        (
            "GET",
            "/v1/fleets/{fleet_id}/devices/{device_id}",
            c.get(
                f"/v1/fleets/{world.fleet_id}/devices/{device.device_id}",
                headers=world.headers["viewer"],
            ),
            200,
        ),
        ("GET", "/v1/me", c.get("/v1/me", headers=world.headers["viewer"]), 200),
        (
            "GET",
            "/ui/fleets/{fleet_id}",
            c.get(f"/ui/fleets/{world.fleet_id}", follow_redirects=False),
            303,
        ),
    ]
    after = scrape(c)
    for method, route, response, status in calls:
        assert response.status_code == status, (route, response.text)
        labels = {"method": method, "route": route, "status": str(status)}
        grew = value(after, "bastion_http_requests_total", **labels) - (
            value(before, "bastion_http_requests_total", **labels)
            if tuple(sorted(labels.items())) in before.get("bastion_http_requests_total", {})
            else 0.0
        )
        assert grew == 1, (route, grew)
        assert (
            value(after, "bastion_http_request_duration_seconds_count", method=method, route=route)
            >= 1
        )
    raw = {dict(k)["route"] for k in after["bastion_http_requests_total"]}
    assert not any(device.device_id in r or world.fleet_id in r for r in raw)


@pytest.mark.parametrize(
    ("client_host", "headers", "status"),
    [
        ("127.0.0.1", {}, 200),
        ("::1", {}, 200),
        ("testclient", {"Authorization": f"Bearer {TOKEN}"}, 200),
        ("203.0.113.7", {"Authorization": f"Bearer {TOKEN}"}, 200),
        ("203.0.113.7", {}, 401),
        ("203.0.113.7", {"Authorization": f"Bearer {TOKEN[:-1]}"}, 401),
        ("203.0.113.7", {"Authorization": f"Bearer {TOKEN}x"}, 401),
        ("203.0.113.7", {"Authorization": f"Basic {TOKEN}"}, 401),
        ("203.0.113.7", {"Authorization": "Bearer "}, 401),
        ("10.0.0.1", {"Authorization": "Bearer bst_ses_notthemetricstoken"}, 401),
    ],
)
def test_who_may_scrape(
    world: FleetWorld, client_host: str, headers: dict[str, str], status: int
) -> None:
    app = world.client.app
    with TestClient(app, client=(client_host, 50000), raise_server_exceptions=False) as c:
        response = c.get("/metrics", headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert response.json()["error"] == "unauthenticated"
        assert "bastion_devices" not in response.text


def test_without_a_token_only_loopback(make_app) -> None:
    app = make_app()
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
    with TestClient(app, client=("127.0.0.1", 1), raise_server_exceptions=False) as c:
        assert c.get("/metrics").status_code == 200


def test_two_apps_share_no_metrics(make_app, tmp_path: Path) -> None:
    first = make_app()
    second = make_app(data_dir=tmp_path / "second")
    with (
        TestClient(first, client=("127.0.0.1", 1), raise_server_exceptions=False) as a,
        TestClient(second, client=("127.0.0.1", 1), raise_server_exceptions=False) as b,
    ):
        for _ in range(5):
            a.get("/v1/health")
        b.get("/v1/health")

        def health(c: TestClient) -> float:
            return value(
                scrape(c, {}),
                "bastion_http_requests_total",
                method="GET",
                route="/v1/health",
                status="200",
            )

        assert health(a) == 5 and health(b) == 1


# --- devices by verdict and version, channel connections -------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def attested(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetWorld]:
    """A fleet with golden values (test_attestation's set-up) and the metrics token."""
    from .test_attestation import attested_world

    folder = tmp_path_factory.mktemp("metrics-attested")
    with attested_world(request.param, folder, metrics_token=TOKEN) as w:
        yield w


def _fleet_devices(world: FleetWorld) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = []
    for fleet in (world.fleet_id, world.other_fleet_id):
        answer = world.client.get(f"/v1/fleets/{fleet}/devices", headers=world.headers["owner"])
        assert answer.status_code == 200, answer.text
        listed += answer.json()
    return listed


def _newest_verdict(world: FleetWorld, device: dict[str, Any]) -> str:
    answer = world.client.get(
        f"/v1/fleets/{device['fleet_id']}/devices/{device['id']}/attestations",
        headers=world.headers["owner"],
    )
    assert answer.status_code == 200, answer.text
    rows = answer.json()
    return "none" if not rows else "passed" if rows[0]["ok"] else "failed"


def _connected(world: FleetWorld, device: dict[str, Any]) -> bool:
    answer = world.client.get(
        f"/v1/fleets/{device['fleet_id']}/devices/{device['id']}/presence",
        headers=world.headers["owner"],
    )
    assert answer.status_code == 200, answer.text
    return bool(answer.json()["connected"])


def test_devices_by_verdict_version_and_connection_match_the_api(
    attested: FleetWorld, tmp_path: Path
) -> None:
    from bastion.device.agent.signing import TpmRequestSigner
    from bastion.io.http import HttpClient

    from .test_attestation import Dev

    w = attested
    passed = Dev(w, tmp_path / "a", "metrics-pass")
    failed = Dev(w, tmp_path / "b", "metrics-fail")
    Dev(w, tmp_path / "c", "metrics-never")
    assert passed.attest()["ok"]
    assert not failed.attest({"selinux": "permissive"})["ok"]
    signers = {}
    for dev, version in ((passed, "Debian 12.7"), (failed, 'odd "ver\\sion"\n' + "x" * 200)):
        signers[dev] = TpmRequestSigner(dev.tpm, dev.identity, w.ctx.clock)
        http = HttpClient.over(w.client, signer=signers[dev])
        http.call_object("POST", "/v1/device/heartbeat", {"os_version": version})

    def presence(expected: int) -> None:
        """Channel presence is written in batches (up to 50 ms late, ADR 0034): wait for
        the database to say what the channels do before comparing it with the scrape."""
        deadline = time.monotonic() + 10
        while True:
            active = [d for d in _fleet_devices(w) if d["status"] == "active"]
            if sum(1 for d in active if _connected(w, d)) == expected:
                return
            assert time.monotonic() < deadline, f"presence never reached {expected}"
            time.sleep(0.05)

    def check(open_channels: int) -> dict[str, Any]:
        presence(open_channels)
        metrics = scrape(w.client)
        devices = [d for d in _fleet_devices(w) if d["status"] == "active"]
        for verdict in ("passed", "failed", "none"):
            assert value(metrics, "bastion_devices_by_verdict", verdict=verdict) == sum(
                1 for d in devices if _newest_verdict(w, d) == verdict
            ), verdict
        by_version = {
            dict(k)["version"]: v for k, v in metrics["bastion_devices_by_version"].items()
        }
        assert sum(by_version.values()) == len(devices)
        assert by_version["Debian 12.7"] == sum(
            1 for d in devices if d.get("os_version") == "Debian 12.7"
        )
        odd = [k for k in by_version if k.startswith('odd "ver')]
        assert len(odd) == 1 and len(odd[0]) == 64  # cut, and escaped by the exposition
        assert value(metrics, "bastion_devices_connected") == sum(
            1 for d in devices if _connected(w, d)
        )
        assert value(metrics, "bastion_channel_connections") == open_channels
        return metrics

    check(0)
    path = "/v1/device/channel"
    first = w.client.websocket_connect(path, headers=dict(signers[passed]("GET", path, b"")))
    second = w.client.websocket_connect(path, headers=dict(signers[failed]("GET", path, b"")))
    with first, second:
        assert first.receive_json() == {"type": "synced"}  # nothing was queued
        assert second.receive_json() == {"type": "synced"}
        first.send_json({"type": "ping"})
        assert first.receive_json() == {"type": "pong"}
        second.send_json({"type": "ping"})
        assert second.receive_json() == {"type": "pong"}
        check(2)
    # a refused upgrade (no signature) is never counted
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect), w.client.websocket_connect(path) as refused:
        refused.receive_json()
    check(0)


def test_version_labels_are_bounded(
    attested: FleetWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """More reported versions than METRICS_VERSIONS_MAX: the rest are summed as other."""
    from sqlalchemy import update

    from bastion import limits
    from bastion.server.devices.models import Device

    from .test_attestation import Dev

    monkeypatch.setattr(limits, "METRICS_VERSIONS_MAX", 2)
    # its own devices: under xdist this test may get the module's world without the
    # devices the other tests of this file enrolled
    for index in range(3):
        Dev(attested, tmp_path / f"v{index}", f"metrics-version-{index}")
    ids = [d["id"] for d in _fleet_devices(attested) if d["status"] == "active"]
    with attested.ctx.db.session() as session:
        for index, device_id in enumerate(ids):
            session.execute(
                update(Device).where(Device.id == device_id).values(os_version=f"v{index}")
            )
        session.commit()
    metrics = scrape(attested.client)
    by_version = {dict(k)["version"]: v for k, v in metrics["bastion_devices_by_version"].items()}
    assert sum(by_version.values()) == len(ids)
    assert len(ids) > 2, "the world needs more active devices than the cap"
    assert len(by_version) == 3
    assert by_version["other"] == len(ids) - 2
