"""Rollouts and signed device reports over HTTP, on SQLite and PostgreSQL.

Devices enrol with the software TPM and sign their reports in it with the identity key
they enrolled with. Covered: the report negative table over HTTP (replay, stale nonce,
wrong key, tampered, other device), waves by tag/list/percentage with deterministic
assignment, the canary pausing the rollout by itself, "fell back" with its reason,
resume (acknowledged failures), pause, abort, completion setting the fleet target.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from bastion.device.provision import DeviceIdentity
from bastion.device.update.report import ReportFields, build_report
from bastion.formats.update_report import SignedReport, UpdateResult
from bastion.server.rollouts.plan import WavePlan, assign
from bastion.tpm.software import SoftwareTpm

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration
TOKEN = "m" * 40


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with shared_world(request.param, tmp_path_factory.mktemp("rollouts"), metrics_token=TOKEN) as w:
        yield w


class Dev:
    """An enrolled device that signs reports in its own TPM."""

    def __init__(self, world: FleetWorld, folder: Path, serial: str, fleet: str | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.world = world
        self.tpm = SoftwareTpm(folder / "tpm.state")
        self.identity: DeviceIdentity = world.enrol(
            self.tpm, world.create_key(fleet_id=fleet), serial=serial
        )
        self.headers = world.device_headers(self.identity, self.tpm)

    @property
    def id(self) -> str:
        return self.identity.device_id

    def nonce(self) -> bytes:
        got = self.world.client.post("/v1/device/update/report-nonce", headers=self.headers)
        assert got.status_code == 200, got.text
        return base64.b64decode(got.json()["nonce"])

    def signed(
        self, version: str, result: str, reason: str = "", nonce: bytes | None = None
    ) -> bytes:
        fields = ReportFields(self.id, version, "b", 3, UpdateResult(result), reason)
        nonce = nonce or self.nonce()  # the TPM clock attested by the AK (ADR 0038)
        return build_report(self.tpm, self.identity.key, fields, nonce, ak=self.identity.ak)

    def send(self, signed: bytes) -> Any:
        body = {"report": base64.b64encode(signed).decode()}
        return self.world.client.post("/v1/device/update/report", json=body, headers=self.headers)

    def report(self, version: str, result: str, reason: str = "") -> dict[str, Any]:
        answer = self.send(self.signed(version, result, reason))
        assert answer.status_code == 200, answer.text
        out: dict[str, Any] = answer.json()
        return out

    def target(self) -> str | None:
        got = self.world.client.get("/v1/device/target-release", headers=self.headers)
        assert got.status_code == 200, got.text
        release: str | None = got.json()["release"]
        return release


def _release(world: FleetWorld, version: str, fleet: str | None = None) -> str:
    made = world.client.post(
        f"/v1/fleets/{fleet or world.fleet_id}/releases/external",
        json={
            "url": f"https://cdn.example.org/{version}.raucb",
            "length": 4096,
            "sha256": "aa" * 32,
            "version": version,
            "compatible": "bastion-test",
        },
        headers=world.headers["operator"],
    )
    assert made.status_code == 201, made.text
    release_id: str = made.json()["id"]
    return release_id


def _rollouts(world: FleetWorld, fleet: str) -> str:
    return f"/v1/fleets/{fleet}/rollouts"


def test_reports_are_believed_only_signed_fresh_and_own(world: FleetWorld, tmp_path: Path) -> None:
    fleet = world.other_fleet_id
    dev = Dev(world, tmp_path / "a", "rep-a", fleet)
    other = Dev(world, tmp_path / "b", "rep-b", fleet)
    c = world.client
    # no nonce was ever issued
    stray = build_report(
        dev.tpm,
        dev.identity.key,
        ReportFields(dev.id, "1.0", "a", 1, UpdateResult.COMMITTED),
        b"\1" * 32,
    )
    assert dev.send(stray).status_code == 403
    good = dev.signed("1.0", "committed")
    accepted = dev.send(good)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["result"] == "committed" and accepted.json()["svn"] == 3
    replay = dev.send(good)
    assert replay.status_code == 403 and "stale, already used" in replay.json()["detail"]
    # stale: the nonce expired before the report came
    nonce = dev.nonce()
    world.ctx.clock.advance(601)
    stale = dev.send(dev.signed("1.0", "committed", nonce=nonce))
    assert stale.status_code == 403
    # wrong key: signed by another TPM's identity key, claiming to be dev
    n = dev.nonce()
    forged = build_report(
        other.tpm,
        other.identity.key,
        ReportFields(dev.id, "1.0", "b", 3, UpdateResult.COMMITTED),
        n,
    )
    wrong_key = dev.send(forged)
    assert wrong_key.status_code == 403 and "identity key" in wrong_key.json()["detail"]
    # another device's genuine report replayed by dev
    theirs = other.signed("1.0", "committed")
    assert dev.send(theirs).status_code == 403
    assert other.send(theirs).status_code == 200  # still good for its own device
    # one tampered field (the signature kept)
    outer = SignedReport.parse(dev.signed("1.0", "failed", "disk full"))
    doc = json.loads(outer.report)
    doc["result"] = "committed"
    tampered = SignedReport(
        json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), outer.signature
    )
    assert dev.send(tampered.to_bytes()).status_code == 403
    assert dev.send(b"not a report").status_code == 400
    # an operator sees exactly the reports that verified
    history = c.get(
        f"/v1/fleets/{fleet}/devices/{dev.id}/update-reports", headers=world.headers["viewer"]
    ).json()
    assert [r["result"] for r in history] == ["committed"]
    # the nonce and report routes are the device's own
    assert (
        c.post("/v1/device/update/report-nonce", headers=world.headers["admin"]).status_code == 403
    )


def test_waves_canary_auto_pause_fell_back_resume_complete(
    world: FleetWorld, tmp_path: Path
) -> None:
    c = world.client
    fleet = world.fleet_id
    devs = [Dev(world, tmp_path / f"d{i}", f"wave-{i}") for i in range(8)]
    canary, named = devs[0], devs[1]
    tagged = c.put(
        f"/v1/fleets/{fleet}/devices/{canary.id}/tags/lab", headers=world.headers["operator"]
    )
    assert tagged.status_code == 204, tagged.text
    assert c.get(
        f"/v1/fleets/{fleet}/devices/{canary.id}/tags", headers=world.headers["viewer"]
    ).json() == {"tags": ["lab"]}
    release = _release(world, "7.0.0")
    waves = [
        {"name": "canary", "canary": True, "tag": "lab", "success_percent": 100},
        {"name": "named", "devices": [named.id]},
        {"name": "rest", "percent": 100, "success_percent": 100, "failure_percent": 0},
    ]
    assert (
        c.post(
            _rollouts(world, fleet),
            json={"release_id": release, "waves": waves},
            headers=world.headers["viewer"],
        )
    ).status_code == 403
    bad = c.post(
        _rollouts(world, fleet),
        json={
            "release_id": release,
            "waves": [{"name": "x", "percent": 60}, {"name": "y", "percent": 50}],
        },
        headers=world.headers["operator"],
    )
    assert bad.status_code == 400 and "110" in bad.json()["detail"]
    started = c.post(
        _rollouts(world, fleet),
        json={"release_id": release, "waves": waves},
        headers=world.headers["operator"],
    )
    assert started.status_code == 201, started.text
    rollout = started.json()
    rid = rollout["id"]
    assert rollout["state"] == "running" and rollout["active_wave"] == 0
    assert [w["assigned"] for w in rollout["waves"]] == [1, 1, len(devs) - 2]
    # the assignment is the pure rule's, and stable
    plans = [
        WavePlan(0, "canary", canary=True, tag="lab"),
        WavePlan(1, "named", devices=frozenset({named.id})),
        WavePlan(2, "rest", percent=100),
    ]
    for d in devs:
        tags = {"lab"} if d is canary else set()
        assert assign(plans, rid, d.id, tags) == (0 if d is canary else 1 if d is named else 2)
    # a second rollout in the same fleet is refused while this one runs
    again = c.post(
        _rollouts(world, fleet),
        json={"release_id": release, "waves": waves},
        headers=world.headers["operator"],
    )
    assert again.status_code == 409
    # only the canary is offered the release
    assert canary.target() == "7.0.0"
    assert [d.target() for d in devs[1:]] == [None] * (len(devs) - 1)
    # "installed" alone does not open the next wave; "committed" does
    assert canary.report("7.0.0", "installed")["rollout_state"] == "running"
    assert named.target() is None
    canary.report("7.0.0", "committed")
    assert named.target() == "7.0.0" and devs[2].target() is None
    named.report("7.0.0", "committed")
    status = c.get(f"{_rollouts(world, fleet)}/{rid}", headers=world.headers["viewer"]).json()
    assert status["active_wave"] == 2 and [w["state"] for w in status["waves"]] == [
        "done",
        "done",
        "open",
    ]
    rest = devs[2:]
    assert all(d.target() == "7.0.0" for d in rest)
    # one device of the open wave falls back: the rollout pauses by itself
    answer = rest[0].report("7.0.0", "fell_back", "health check 'app' failed: exit 3")
    assert answer["rollout_state"] == "paused"
    status = c.get(f"{_rollouts(world, fleet)}/{rid}", headers=world.headers["viewer"]).json()
    assert status["state"] == "paused" and "fell back" in status["paused_reason"]
    assert status["problems"] == [
        {
            "device_id": rest[0].id,
            "wave": 2,
            "result": "fell_back",
            "reason": "health check 'app' failed: exit 3",
            "reported_at": status["problems"][0]["reported_at"],
        }
    ]
    assert status["waves"][2]["fell_back"] == 1
    # paused: devices that had not reported stop being offered it; reporters keep it
    assert rest[1].target() is None and rest[0].target() == "7.0.0"
    assert "rollout.auto_pause" in world.audit_events()
    # the progress gauge agrees with the status
    from .test_metrics import scrape, value

    metrics = scrape(c, {"Authorization": f"Bearer {TOKEN}"})
    labels = {"fleet": fleet, "rollout": rid}
    assert value(metrics, "bastion_rollout_devices", **labels, wave="2", result="fell_back") == 1
    assert value(metrics, "bastion_rollout_devices", **labels, wave="0", result="committed") == 1
    assert value(metrics, "bastion_rollout_progress", **labels, state="paused") == pytest.approx(
        2 / len(devs)
    )
    # resume acknowledges the failure; the others commit; the rollout completes
    assert (
        c.post(
            f"{_rollouts(world, fleet)}/{rid}/resume", headers=world.headers["viewer"]
        ).status_code
        == 403
    )
    resumed = c.post(f"{_rollouts(world, fleet)}/{rid}/resume", headers=world.headers["operator"])
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    assert resumed.json()["waves"][2]["acknowledged_failures"] == 1
    for d in rest[1:-1]:
        d.report("7.0.0", "committed")
    assert rest[-1].report("7.0.0", "committed")["rollout_state"] == "running"  # 1 fell back
    # the fallen-back device retries and commits: 100% committed
    final = rest[0].report("7.0.0", "committed")
    assert final["rollout_state"] == "completed"
    target = c.get(f"/v1/fleets/{fleet}/target-release", headers=world.headers["viewer"]).json()
    assert target["release"]["version"] == "7.0.0"
    assert "rollout.complete" in world.audit_events()
    listed = c.get(_rollouts(world, fleet), headers=world.headers["viewer"]).json()
    assert listed[0]["id"] == rid and listed[0]["state"] == "completed"


def test_pause_resume_abort_and_percent_waves(world: FleetWorld, tmp_path: Path) -> None:
    c = world.client
    fleet = world.fleet_id
    devs = [Dev(world, tmp_path / f"p{i}", f"pause-{i}") for i in range(4)]
    release = _release(world, "8.0.0")
    waves = [
        {"name": "half", "percent": 50, "failure_percent": 50},
        {"name": "rest", "percent": 50},
    ]
    started = c.post(
        _rollouts(world, fleet),
        json={"release_id": release, "waves": waves},
        headers=world.headers["operator"],
    )
    assert started.status_code == 201, started.text
    rid = started.json()["id"]
    base = f"{_rollouts(world, fleet)}/{rid}"
    assert c.post(f"{base}/resume", headers=world.headers["operator"]).status_code == 409
    paused = c.post(f"{base}/pause", headers=world.headers["operator"])
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert c.post(f"{base}/pause", headers=world.headers["operator"]).status_code == 409
    all_devices = c.get(f"/v1/fleets/{fleet}/devices", headers=world.headers["viewer"]).json()
    assert all(d.target() != "8.0.0" for d in devs)  # paused before anyone started
    assert c.post(f"{base}/resume", headers=world.headers["operator"]).json()["state"] == "running"
    plans = [WavePlan(0, "half", percent=50), WavePlan(1, "rest", percent=50)]
    first = [d for d in devs if assign(plans, rid, d.id, set()) == 0]
    assert all(d.target() == "8.0.0" for d in first)
    status = c.get(base, headers=world.headers["viewer"]).json()
    assert sum(w["assigned"] for w in status["waves"]) == len(all_devices)  # every active device
    aborted = c.post(f"{base}/abort", headers=world.headers["operator"])
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    assert c.post(f"{base}/abort", headers=world.headers["operator"]).status_code == 409
    assert all(d.target() != "8.0.0" for d in devs)  # back to the fleet target
    assert "rollout.abort" in world.audit_events()
    # other fleets' operators see nothing
    assert (
        c.get(base.replace(fleet, world.other_fleet_id), headers=world.headers["admin"]).status_code
        == 404
    )


def test_concurrent_reports_complete_the_rollout_once(world: FleetWorld, tmp_path: Path) -> None:
    """Reports of one wave arrive at once (uvicorn, one thread per device): every one is
    counted, the rollout advances and completes exactly once (the row lock)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from .devicekit import serve_on_loopback

    c = world.client
    fleet = world.other_fleet_id
    # only this test's devices take part: revoke any the module enrolled in this fleet
    for old in c.get(f"/v1/fleets/{fleet}/devices", headers=world.headers["viewer"]).json():
        if old["status"] == "active":
            c.post(f"/v1/fleets/{fleet}/devices/{old['id']}/revoke", headers=world.headers["admin"])
    devs = [Dev(world, tmp_path / f"c{i}", f"conc-{i}", fleet) for i in range(8)]
    release = _release(world, "10.0.0", fleet)
    waves = [{"name": "half", "percent": 50}, {"name": "rest", "percent": 50}]
    # taken before the start: when the hash puts no device in the first wave, the rollout
    # advances at once, inside the start request
    before = world.audit_events()
    started = c.post(
        _rollouts(world, fleet),
        json={"release_id": release, "waves": waves},
        headers=world.headers["operator"],
    )
    assert started.status_code == 201, started.text
    rid = started.json()["id"]
    plans = [WavePlan(0, "half", percent=50), WavePlan(1, "rest", percent=50)]
    first = [d for d in devs if assign(plans, rid, d.id, set()) == 0]
    rest = [d for d in devs if d not in first]
    assert len(first) + len(rest) == len(devs)

    def post_all(group: list[Dev], url: str) -> list[int]:
        signed = [d.signed("10.0.0", "committed") for d in group]

        def send(i: int) -> int:
            body = {"report": base64.b64encode(signed[i]).decode()}
            with httpx.Client(base_url=url, timeout=60) as h:
                answer = h.post("/v1/device/update/report", json=body, headers=group[i].headers)
            return answer.status_code

        with ThreadPoolExecutor(max_workers=len(group) or 1) as pool:
            return list(pool.map(send, range(len(group))))

    with serve_on_loopback(c.app) as url:
        assert post_all(first, url) == [200] * len(first)
        assert post_all(rest, url) == [200] * len(rest)
    status = c.get(f"{_rollouts(world, fleet)}/{rid}", headers=world.headers["viewer"]).json()
    assert status["state"] == "completed"
    assert [w["committed"] for w in status["waves"]] == [len(first), len(rest)]
    events = world.audit_events()
    assert events.count("rollout.advance") - before.count("rollout.advance") == 1
    assert events.count("rollout.complete") - before.count("rollout.complete") == 1


def test_a_device_enrolled_after_the_start_is_assigned_by_its_target_request(
    world: FleetWorld, tmp_path: Path
) -> None:
    """The target route answers from a read session; a device without its wave row
    (enrolled after the start) gets it in a write session, once."""
    from sqlalchemy import event

    c = world.client
    fleet = world.fleet_id
    Dev(world, tmp_path / "early", "late-early")
    release = _release(world, "9.0.0")
    started = c.post(
        _rollouts(world, fleet),
        json={"release_id": release, "waves": [{"name": "all", "percent": 100}]},
        headers=world.headers["operator"],
    )
    assert started.status_code == 201, started.text
    base = f"{_rollouts(world, fleet)}/{started.json()['id']}"
    try:
        before = sum(
            w["assigned"] for w in c.get(base, headers=world.headers["viewer"]).json()["waves"]
        )
        late = Dev(world, tmp_path / "late", "late-late")
        seen: list[str] = []

        def record(*args: object) -> None:
            seen.append(" ".join(str(args[2]).split()[:3]).upper())

        engine = world.ctx.db.engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            assert late.target() == "9.0.0"
            assert seen.count("INSERT INTO ROLLOUT_DEVICES") == 1, seen
            seen.clear()
            assert late.target() == "9.0.0"  # its wave row exists: read only
            assert not [s for s in seen if "ROLLOUT_DEVICES" in s and "SELECT" not in s], seen
        finally:
            event.remove(engine, "before_cursor_execute", record)
        status = c.get(base, headers=world.headers["viewer"]).json()
        assert sum(w["assigned"] for w in status["waves"]) == before + 1
    finally:
        aborted = c.post(f"{base}/abort", headers=world.headers["operator"])
        assert aborted.status_code == 200, aborted.text
