"""The dashboard's releases and rollouts pages over HTTP (no browser), SQLite and PostgreSQL.

Start, pause, resume and abort through the forms, each refused for a viewer and
without the CSRF token with nothing changed; the device's target release shown on the
fleet and device pages follows the rollout (the rule of the device target route).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bastion.server.ui.security import SESSION_COOKIE, csrf_token
from bastion.tpm.software import SoftwareTpm

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetWorld]:
    with shared_world(request.param, tmp_path_factory.mktemp("dash-roll")) as w:
        yield w


def _as(world: FleetWorld, role: str) -> tuple[TestClient, str]:
    client = TestClient(world.client.app, follow_redirects=False)
    token = world.headers[role]["Authorization"].removeprefix("Bearer ")
    client.cookies.set(SESSION_COOKIE, token, path="/ui")
    return client, csrf_token(token)


def _release(world: FleetWorld, version: str) -> str:
    made = world.client.post(
        f"/v1/fleets/{world.fleet_id}/releases/external",
        json={
            "url": f"https://cdn.example.org/{version}.raucb",
            "length": 4096,
            "sha256": "ab" * 32,
            "version": version,
            "compatible": "bastion-test",
        },
        headers=world.headers["operator"],
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def _state(world: FleetWorld, rollout_id: str) -> str:
    r = world.client.get(
        f"/v1/fleets/{world.fleet_id}/rollouts/{rollout_id}", headers=world.headers["viewer"]
    )
    assert r.status_code == 200, r.text
    return str(r.json()["state"])


def _rollouts(world: FleetWorld) -> list[dict[str, Any]]:
    r = world.client.get(f"/v1/fleets/{world.fleet_id}/rollouts", headers=world.headers["viewer"])
    assert r.status_code == 200, r.text
    return list(r.json())


def _detail(html: str) -> str:
    found = re.search(r'id="error-detail">([^<]*)<', html)
    return found.group(1) if found else ""


def test_rollout_forms(world: FleetWorld, tmp_path: Path) -> None:
    device = world.enrol(SoftwareTpm(tmp_path / "tpm"), world.create_key(), serial="roll-ui")
    release = _release(world, "3.1")
    operator, operator_csrf = _as(world, "operator")
    viewer, viewer_csrf = _as(world, "viewer")
    stranger, stranger_csrf = _as(world, "stranger")
    base = f"/ui/fleets/{world.fleet_id}"
    page = viewer.get(f"{base}/releases")
    assert page.status_code == 200 and "3.1" in page.text
    assert 'id="rollout-form"' not in viewer.get(f"{base}/rollouts").text
    assert 'id="rollout-form"' in operator.get(f"{base}/rollouts").text
    start = {"release_id": release, "canary_percent": "0"}
    for case, client, data, status, message in [
        ("viewer", viewer, {**start, "csrf": viewer_csrf}, 403, "not enough"),
        ("no CSRF", operator, start, 403, "CSRF"),
        ("stranger", stranger, {**start, "csrf": stranger_csrf}, 404, "not found"),
        (
            "unknown release",
            operator,
            {**start, "release_id": "0" * 32, "csrf": operator_csrf},
            404,
            "not found",
        ),
        (
            "canary of 100 %",
            operator,
            {**start, "canary_percent": "100", "csrf": operator_csrf},
            422,
            "",
        ),
    ]:
        r = client.post(f"{base}/rollouts", data=data)
        assert r.status_code == status, (case, r.status_code, _detail(r.text))
        assert message in r.text, (case, _detail(r.text))
        assert _rollouts(world) == [], case
    r = operator.post(f"{base}/rollouts", data={**start, "csrf": operator_csrf})
    assert r.status_code == 303, _detail(r.text)
    (rollout,) = _rollouts(world)
    assert r.headers["location"] == f"{base}/rollouts/{rollout['id']}"
    assert _state(world, rollout["id"]) == "running"
    # the device's wave is open: its target is the rollout's release
    shown = viewer.get(f"{base}/devices/{device.device_id}").text
    assert re.search(r"<dt>Target release</dt><dd>3\.1</dd>", shown), shown
    again = operator.post(f"{base}/rollouts", data={**start, "csrf": operator_csrf})
    assert again.status_code == 409 and "abort it first" in again.text
    act = f"{base}/rollouts/{rollout['id']}"
    status_page = viewer.get(act).text
    assert 'data-state="running"' in status_page and 'id="rollout-pause"' not in status_page
    assert 'id="rollout-pause"' in operator.get(act).text
    for name, before in (("pause", "running"), ("resume", "paused"), ("abort", "running")):
        assert viewer.post(f"{act}/{name}", data={"csrf": viewer_csrf}).status_code == 403
        assert operator.post(f"{act}/{name}", data={}).status_code == 403
        assert _state(world, rollout["id"]) == before, name
        r = operator.post(f"{act}/{name}", data={"csrf": operator_csrf})
        assert r.status_code == 303 and r.headers["location"] == act, _detail(r.text)
    assert _state(world, rollout["id"]) == "aborted"
    r = operator.post(f"{act}/pause", data={"csrf": operator_csrf})
    assert r.status_code == 409 and "not running" in r.text
    # aborted: the device falls back to the fleet target (none here)
    shown = viewer.get(f"{base}/devices/{device.device_id}").text
    assert re.search("<dt>Target release</dt><dd>\u2013</dd>", shown), shown
    events = world.audit_events()
    assert {"rollout.start", "rollout.pause", "rollout.resume", "rollout.abort"} <= set(events)
