"""Webhooks: endpoints per fleet (admin, audited), events from revocation and attestation,
HMAC-SHA256 signatures with a signed timestamp, retries with backoff, the delivery log,
one delivery per claim across processes. A real receiver on a free loopback port.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion import limits
from bastion.errors import ExpiredError, SignatureError
from bastion.server.db.engine import Database
from bastion.server.webhooks import service
from bastion.server.webhooks.models import WebhookDelivery
from bastion.server.webhooks.worker import WebhookWorker

from .devicekit import FleetWorld
from .test_attestation import Dev as AttestedDev
from .test_attestation import attested_world_fixture

pytestmark = pytest.mark.integration


class Receiver:
    """A loopback HTTP server recording POSTs and answering from a list of statuses."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append((dict(self.headers.items()), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


world = attested_world_fixture("webhooks", webhook_worker=False)


@pytest.fixture(autouse=True)
def _no_endpoints_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts and ends with no endpoint (the fleet keeps at most 16)."""
    yield
    if "world" in request.fixturenames:
        _delete_hooks(request.getfixturevalue("world"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _worker(world: FleetWorld, db: Database | None = None) -> WebhookWorker:
    ctx = world.ctx
    return WebhookWorker(db or ctx.db, ctx.secret_box, ctx.clock, backoff_base=10.0)


def _hook(world: FleetWorld, url: str, events: list[str]) -> dict[str, Any]:
    r = world.client.post(
        f"/v1/fleets/{world.fleet_id}/webhooks",
        json={"url": url, "events": events},
        headers=world.headers["admin"],
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _delete_hooks(world: FleetWorld) -> None:
    for hook in world.client.get(
        f"/v1/fleets/{world.fleet_id}/webhooks", headers=world.headers["admin"]
    ).json():
        world.client.delete(
            f"/v1/fleets/{world.fleet_id}/webhooks/{hook['id']}", headers=world.headers["admin"]
        )


def _log(world: FleetWorld, hook_id: str) -> list[dict[str, Any]]:
    r = world.client.get(
        f"/v1/fleets/{world.fleet_id}/webhooks/{hook_id}/deliveries",
        headers=world.headers["operator"],
    )
    assert r.status_code == 200, r.text
    return list(r.json())


def test_revocation_is_delivered_signed(
    world: FleetWorld, receiver: Receiver, tmp_path: Path
) -> None:
    hook = _hook(world, receiver.url, ["device.revoked"])
    assert hook["secret"].startswith("whsec_")
    dev = AttestedDev(world, tmp_path, "wh-revoke")
    r = world.client.post(
        f"/v1/fleets/{world.fleet_id}/devices/{dev.identity.device_id}/revoke",
        headers=world.headers["operator"],
    )
    assert r.status_code == 200, r.text
    assert _worker(world).run_once() == 1
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    now = int(world.ctx.clock.now().timestamp())
    service.verify(hook["secret"], headers, body, now)  # raises when wrong
    event = json.loads(body)
    assert event["type"] == "device.revoked" and event["fleet"] == world.fleet_id
    assert event["data"] == {"device": dev.identity.device_id}
    assert headers["X-Bastion-Event"] == "device.revoked"
    log = _log(world, hook["id"])
    assert [(d["status"], d["attempts"], d["last_status_code"]) for d in log] == [
        ("delivered", 1, 200)
    ]
    assert _worker(world).run_once() == 0  # nothing left
    _delete_hooks(world)


def test_attestation_failed_and_passed_again(
    world: FleetWorld, receiver: Receiver, tmp_path: Path
) -> None:
    hook = _hook(world, receiver.url, ["attestation.failed", "attestation.passed"])
    dev = AttestedDev(world, tmp_path, "wh-attest")
    assert dev.attest()["ok"]  # a first pass is no event
    assert not dev.attest({"selinux": "permissive"})["ok"]
    assert dev.attest()["ok"]  # passed again
    assert dev.attest()["ok"]  # and again: no event
    assert _worker(world).run_once() == 2
    events = [json.loads(body) for _, body in receiver.requests]
    assert [e["type"] for e in events] == ["attestation.failed", "attestation.passed"]
    assert events[0]["data"]["failures"] == ["posture.selinux.permissive"]
    assert events[1]["data"]["failures"] == []
    assert all(e["data"]["device"] == dev.identity.device_id for e in events)
    assert len(_log(world, hook["id"])) == 2
    _delete_hooks(world)


def test_retries_back_off_then_fail(
    world: FleetWorld, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "WEBHOOK_MAX_ATTEMPTS", 3)
    hook = _hook(world, receiver.url, ["device.revoked"])
    receiver.statuses = [500, 503, 500]
    with world.ctx.db.session() as session:
        assert (
            service.emit(
                session, world.fleet_id, "device.revoked", {"device": "x"}, world.ctx.clock.now()
            )
            == 1
        )
        session.commit()
    worker = _worker(world)
    clock = world.ctx.clock
    assert worker.run_once() == 1
    (first,) = _log(world, hook["id"])
    assert (first["status"], first["attempts"], first["last_status_code"]) == ("pending", 1, 500)
    assert first["last_error"].startswith("HTTP 500")
    assert worker.run_once() == 0  # not due before its backoff
    clock.advance(13)  # 10 s * jitter 0.8..1.2
    assert worker.run_once() == 1
    assert _log(world, hook["id"])[0]["attempts"] == 2
    clock.advance(15)
    assert worker.run_once() == 0  # the second wait is twice as long (16..24 s)
    clock.advance(10)
    assert worker.run_once() == 1
    (last,) = _log(world, hook["id"])
    assert (last["status"], last["attempts"], last["next_attempt_at"]) == ("failed", 3, None)
    assert len(receiver.requests) == 3
    # every attempt was signed afresh over the same body
    assert len({body for _, body in receiver.requests}) == 1
    _delete_hooks(world)


def test_an_unreachable_endpoint_is_logged(world: FleetWorld, receiver: Receiver) -> None:
    url = receiver.url
    receiver.close()  # nobody listens any more
    hook = _hook(world, url, ["device.revoked"])
    with world.ctx.db.session() as session:
        service.emit(
            session, world.fleet_id, "device.revoked", {"device": "y"}, world.ctx.clock.now()
        )
        session.commit()
    assert _worker(world).run_once() == 1
    (entry,) = _log(world, hook["id"])
    assert entry["status"] == "pending" and entry["last_status_code"] is None
    assert "ConnectError" in entry["last_error"]
    receiver.server = _Dummy()  # type: ignore[assignment]
    _delete_hooks(world)


class _Dummy:
    def shutdown(self) -> None:
        return None

    def server_close(self) -> None:
        return None


def test_the_outbox_commits_with_the_event(world: FleetWorld, receiver: Receiver) -> None:
    hook = _hook(world, receiver.url, ["device.revoked"])
    with world.ctx.db.session() as session:
        service.emit(
            session, world.fleet_id, "device.revoked", {"device": "z"}, world.ctx.clock.now()
        )
        session.rollback()  # the change that raised the event did not happen
    assert _log(world, hook["id"]) == []
    # a disabled endpoint gets nothing new; other fleets' endpoints neither
    world.client.patch(
        f"/v1/fleets/{world.fleet_id}/webhooks/{hook['id']}",
        json={"active": False},
        headers=world.headers["admin"],
    )
    with world.ctx.db.session() as session:
        assert (
            service.emit(session, world.fleet_id, "device.revoked", {}, world.ctx.clock.now()) == 0
        )
        assert (
            service.emit(session, world.other_fleet_id, "device.revoked", {}, world.ctx.clock.now())
            == 0
        )
    _delete_hooks(world)


def test_two_workers_never_send_one_delivery_twice(world: FleetWorld, receiver: Receiver) -> None:
    hook = _hook(world, receiver.url, ["device.revoked"])
    with world.ctx.db.session() as session:
        for i in range(6):
            service.emit(
                session,
                world.fleet_id,
                "device.revoked",
                {"device": f"d{i}"},
                world.ctx.clock.now(),
            )
        session.commit()
    other = Database(world.ctx.db.url)  # a second process's engine
    try:
        workers = [_worker(world), _worker(world, other)]
        barrier = threading.Barrier(2)
        counts: list[int] = []

        def run(w: WebhookWorker) -> None:
            barrier.wait()
            counts.append(w.run_once())

        threads = [threading.Thread(target=run, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.dispose()
    assert sum(counts) == 6
    assert len(receiver.requests) == 6
    devices = sorted(json.loads(body)["data"]["device"] for _, body in receiver.requests)
    assert devices == [f"d{i}" for i in range(6)]
    assert {d["status"] for d in _log(world, hook["id"])} == {"delivered"}
    _delete_hooks(world)


def test_management_is_audited_and_secrets_stay_sealed(
    world: FleetWorld, receiver: Receiver
) -> None:
    hook = _hook(world, receiver.url, ["device.revoked"])
    listed = world.client.get(
        f"/v1/fleets/{world.fleet_id}/webhooks", headers=world.headers["operator"]
    ).json()
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    r = world.client.patch(
        f"/v1/fleets/{world.fleet_id}/webhooks/{hook['id']}",
        json={"events": ["attestation.failed", "device.revoked"]},
        headers=world.headers["admin"],
    )
    assert r.status_code == 200 and r.json()["events"] == ["attestation.failed", "device.revoked"]
    from bastion.server.webhooks.models import Webhook

    with world.ctx.db.session(write=False) as session:
        stored = session.get(Webhook, hook["id"]).secret
    assert hook["secret"] not in stored
    assert world.ctx.secret_box.open(stored, f"webhook:{hook['id']}") == hook["secret"]
    _delete_hooks(world)
    events = world.audit_events()
    for name in ("webhook.create", "webhook.update", "webhook.delete"):
        assert name in events


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"url": "ftp://127.0.0.1/x", "events": ["device.revoked"]}, 400, "https://"),
        ({"url": "http://example.com/x", "events": ["device.revoked"]}, 400, "loopback"),
        ({"url": "https://u:p@example.com/", "events": ["device.revoked"]}, 400, "password"),
        ({"url": "https:///nohost", "events": ["device.revoked"]}, 400, "https://"),
        ({"url": "https://example.com/", "events": ["device.exploded"]}, 400, "unknown"),
        ({"url": "https://example.com/", "events": []}, 422, ""),
        ({"url": "https://e.com/" + "a" * 2048, "events": ["device.revoked"]}, 422, ""),
        ({"url": "https://example.com/", "events": ["device.revoked"], "x": 1}, 422, ""),
    ],
)
def test_bad_endpoints_are_refused(
    world: FleetWorld, body: dict[str, Any], status: int, needle: str
) -> None:
    r = world.client.post(
        f"/v1/fleets/{world.fleet_id}/webhooks", json=body, headers=world.headers["admin"]
    )
    assert r.status_code == status, r.text
    assert needle in r.text


def test_endpoints_per_fleet_are_bounded(world: FleetWorld) -> None:
    for i in range(limits.WEBHOOKS_PER_FLEET):
        _hook(world, f"https://example.com/{i}", ["device.revoked"])
    r = world.client.post(
        f"/v1/fleets/{world.fleet_id}/webhooks",
        json={"url": "https://example.com/one-more", "events": ["device.revoked"]},
        headers=world.headers["admin"],
    )
    assert r.status_code == 413, r.text
    _delete_hooks(world)


# --- the signature scheme a receiver checks -------------------------------------------------------

SECRET = service.new_secret()
BODY = b'{"type":"device.revoked"}'
NOW = 1_700_000_000


def _signed(**change: Any) -> tuple[str, dict[str, str], bytes, int]:
    headers = service.sign(SECRET, NOW, BODY)
    values: dict[str, Any] = {"secret": SECRET, "headers": headers, "body": BODY, "now": NOW}
    values.update(change)
    return values["secret"], values["headers"], values["body"], values["now"]


def test_signature_verifies() -> None:
    service.verify(*_signed())
    service.verify(*_signed(now=NOW + service.TOLERANCE_SECONDS))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"secret": service.new_secret()}, SignatureError),
        ({"body": BODY + b" "}, SignatureError),
        (
            {"headers": {**service.sign(SECRET, NOW, BODY), "X-Bastion-Timestamp": str(NOW + 1)}},
            SignatureError,
        ),
        ({"headers": {"X-Bastion-Timestamp": str(NOW)}}, SignatureError),
        ({"headers": {}}, SignatureError),
        (
            {"headers": {**service.sign(SECRET, NOW, BODY), "X-Bastion-Signature": "v1=00"}},
            SignatureError,
        ),
        ({"now": NOW + service.TOLERANCE_SECONDS + 1}, ExpiredError),
        ({"now": NOW - service.TOLERANCE_SECONDS - 1}, ExpiredError),
    ],
)
def test_signature_negative_table(change: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        service.verify(*_signed(**change))


def test_delivery_rows_are_kept_per_endpoint(world: FleetWorld, receiver: Receiver) -> None:
    a = _hook(world, receiver.url, ["device.revoked"])
    b = _hook(world, receiver.url, ["device.revoked"])
    with world.ctx.db.session() as session:
        service.emit(
            session,
            world.fleet_id,
            "device.revoked",
            {"device": "w"},
            world.ctx.clock.now() + dt.timedelta(seconds=1),
        )
        session.commit()
    with world.ctx.db.session(write=False) as session:
        rows = (
            session.query(WebhookDelivery)
            .filter(WebhookDelivery.webhook_id.in_([a["id"], b["id"]]))
            .all()
        )
        assert len(rows) == 2 and rows[0].event_id == rows[1].event_id
    world.ctx.clock.advance(1)
    assert _worker(world).run_once() == 2
    ids = {h["X-Bastion-Delivery"] for h, _ in receiver.requests}
    assert len(ids) == 2
    _delete_hooks(world)
