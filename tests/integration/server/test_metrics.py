"""Prometheus metrics: who may scrape, values that match the API, bounded labels, per app.

Scrapes are parsed with ``prometheus_client.parser.text_string_to_metric_families``;
device counts are compared with what the fleet API lists. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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
    templates = set(c.app.openapi()["paths"]) | {"/metrics"}  # type: ignore[attr-defined]
    assert routes <= templates | {"<unmatched>"}
    assert "/metrics" in routes


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
