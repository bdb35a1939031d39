"""Device logs and events: per-device quota and retention, the sweep, paged reads, RBAC.

One world per backend with a small quota (10 records, 32 KiB, one hour) so the bounds
are reached quickly; each test enrols its own device.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from bastion.server.devices.service import DROPPED_EVENT, RecordQuota, sweep_records
from bastion.tpm.software import SoftwareTpm

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration

MAX_COUNT = 10
MAX_BYTES = 32 * 1024
MAX_AGE = 3600


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with shared_world(
        request.param,
        tmp_path_factory.mktemp("records"),
        device_records_max_count=MAX_COUNT,
        device_records_max_bytes=MAX_BYTES,
        device_records_max_age=MAX_AGE,
    ) as w:
        yield w


class Dev:
    def __init__(self, world: FleetWorld, folder: Path, serial: str, fleet: str | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        tpm = SoftwareTpm(folder / "tpm.state")
        identity = world.enrol(tpm, world.create_key(fleet_id=fleet), serial=serial)
        self.id = identity.device_id
        self.headers = {"Authorization": f"Bearer {identity.api_key(tpm)}"}
        self.world = world

    def log(self, *lines: str) -> None:
        r = self.world.client.post(
            "/v1/device/logs", json={"lines": list(lines)}, headers=self.headers
        )
        assert r.status_code == 200, r.text

    def event(self, *types: str) -> None:
        body = {"events": [{"type": t, "data": {"n": i}} for i, t in enumerate(types)]}
        r = self.world.client.post("/v1/device/events", json=body, headers=self.headers)
        assert r.status_code == 200, r.text


def read_all(world: FleetWorld, dev: Dev, kind: str, role: str = "viewer") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        r = world.client.get(
            f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/{kind}",
            params={"since": since, "limit": 4},
            headers=world.headers[role],
        )
        assert r.status_code == 200, r.text
        page = r.json()
        out.extend(page["records"])
        if not page["records"]:
            assert page["next"] == since
            return out
        since = page["next"]


def test_count_quota_drops_oldest_with_a_marker(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "rec-count")
    dev.log(*[f"old {i}" for i in range(8)])
    dev.log(*[f"new {i}" for i in range(5)])
    lines = [r["line"] for r in read_all(world, dev, "logs")]
    assert len(lines) == MAX_COUNT
    assert lines[-5:] == [f"new {i}" for i in range(5)]
    assert "4 older log lines" in lines[-6] and "dropped" in lines[-6]
    assert lines[:4] == ["old 4", "old 5", "old 6", "old 7"]
    # the drop is also a marker event in the device's events
    events = read_all(world, dev, "events")
    assert [(e["type"], e["data"]) for e in events] == [
        (DROPPED_EVENT, {"kind": "log", "count": 4, "bytes": 20, "reason": "quota"})
    ]


def test_event_quota_marker_is_an_event(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "rec-events")
    dev.event(*[f"e{i}" for i in range(MAX_COUNT)])
    dev.event("last")
    events = read_all(world, dev, "events")
    assert len(events) == MAX_COUNT
    marker = events[-2]
    assert marker["type"] == DROPPED_EVENT
    assert marker["data"]["count"] == 2 and marker["data"]["kind"] == "event"
    assert events[-1]["type"] == "last"
    # a batch larger than the whole quota keeps only its newest records
    dev.event(*[f"big{i}" for i in range(3 * MAX_COUNT)])
    events = read_all(world, dev, "events")
    assert len(events) == MAX_COUNT
    assert [e["type"] for e in events[1:]] == [f"big{i}" for i in range(21, 30)]
    assert events[0]["type"] == DROPPED_EVENT


def test_byte_quota(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "rec-bytes")
    dev.log("a" * 10_000, "b" * 10_000, "c" * 10_000)
    dev.log("d" * 10_000)
    lines = [r["line"] for r in read_all(world, dev, "logs")]
    assert sum(len(x.encode()) for x in lines) <= MAX_BYTES
    assert [x[0] for x in lines if len(x) == 10_000] == ["b", "c", "d"]
    assert any("1 older log lines (10000 bytes) dropped" in x for x in lines)


def test_retention_on_write_and_by_sweep(world: FleetWorld, tmp_path: Path) -> None:
    clock = world.ctx.clock
    dev = Dev(world, tmp_path / "a", "rec-age")
    other = Dev(world, tmp_path / "b", "rec-age-2")
    dev.log("ancient")
    other.log("ancient too")
    clock.advance(MAX_AGE + 1)
    try:
        dev.log("fresh")
        assert [r["line"] for r in read_all(world, dev, "logs")] == ["fresh"]
        assert [r["line"] for r in read_all(world, other, "logs")] == ["ancient too"]
        with world.ctx.db.session() as session:
            removed = sweep_records(session, clock.now(), RecordQuota.of(world.ctx.settings))
        assert removed >= 1
        assert read_all(world, other, "logs") == []
        assert [r["line"] for r in read_all(world, dev, "logs")] == ["fresh"]
    finally:
        clock.current -= dt.timedelta(seconds=MAX_AGE + 1)


def test_sweep_applies_a_lowered_quota(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "rec-sweep")
    dev.log(*[f"l{i}" for i in range(6)])
    with world.ctx.db.session() as session:
        removed = sweep_records(
            session, world.ctx.clock.now(), RecordQuota(3, MAX_BYTES, dt.timedelta(hours=1))
        )
    assert removed >= 4  # other devices of this shared world may be trimmed too
    lines = [r["line"] for r in read_all(world, dev, "logs")]
    # the sweep's marker is the newest record: it was written after the survivors
    assert lines[:2] == ["l4", "l5"] and lines[2].startswith("[bastion] 4 older log lines")


def test_paging_with_since_cursor(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "rec-page")
    dev.log(*[f"p{i}" for i in range(9)])
    c, url = world.client, f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/logs"
    first = c.get(url, params={"limit": 5}, headers=world.headers["viewer"]).json()
    assert [r["line"] for r in first["records"]] == [f"p{i}" for i in range(5)]
    second = c.get(url, params={"since": first["next"]}, headers=world.headers["viewer"]).json()
    assert [r["line"] for r in second["records"]] == [f"p{i}" for i in range(5, 9)]
    ids = [r["id"] for r in first["records"] + second["records"]]
    assert ids == sorted(ids)
    for bad in ({"limit": 0}, {"limit": 1001}, {"since": -1}, {"since": "x"}):
        assert c.get(url, params=bad, headers=world.headers["viewer"]).status_code == 422


def test_rbac_on_reads(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path / "a", "rec-rbac")
    elsewhere = Dev(world, tmp_path / "b", "rec-rbac-2", fleet=world.other_fleet_id)
    dev.log("secret line")
    dev.event("secret")
    c = world.client
    for kind in ("logs", "events"):
        url = f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/{kind}"
        assert c.get(url, headers=world.headers["viewer"]).status_code == 200
        # a user of another organisation (owner there) sees nothing of this fleet
        stranger = c.get(url, headers=world.headers["stranger"])
        assert stranger.status_code == 404 and "secret" not in stranger.text
        assert c.get(url, headers=world.headers["anonymous"]).status_code == 401
        # devices never use operator routes, not even for themselves
        assert c.get(url, headers=dev.headers).status_code == 403
        # a device of another fleet cannot be read through this fleet's path
        cross = f"/v1/fleets/{world.fleet_id}/devices/{elsewhere.id}/{kind}"
        assert c.get(cross, headers=world.headers["viewer"]).status_code == 404


def test_oversize_record_is_refused(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "rec-big")
    r = world.client.post("/v1/device/logs", json={"lines": ["é" * 9000]}, headers=dev.headers)
    assert r.status_code == 413  # 18000 bytes of UTF-8, over the 16 KiB record bound
