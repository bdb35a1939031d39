"""The device agent end to end (ADRs 0032, 0033): signed requests, the command channel,
offline queueing and expiry, RBAC, server restarts, and a copied identity without its TPM.

The server runs under uvicorn on loopback (the channel is a real WebSocket); the agent
signs with the device's TPM (software TPM; swtpm for the copied-identity proof). Only
the device-changing actions are a recording double: a test cannot reboot the machine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from devicekit import FleetWorld, build_world, tss_tpm
from fastapi.testclient import TestClient

from bastion.device.agent.agent import Agent, AgentOptions
from bastion.device.agent.signing import TpmRequestSigner
from bastion.device.provision import DeviceIdentity
from bastion.errors import AuthError, TpmError, TransportError
from bastion.io import websocket
from bastion.io.http import HttpClient
from bastion.tpm.software import SoftwareTpm

pytestmark = pytest.mark.integration


class RecordingActions:
    """What the device was told to do (a machine under test cannot reboot)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def reboot(self) -> None:
        self.calls.append(("reboot", ""))

    def restart_service(self, unit: str) -> str:
        self.calls.append(("restart", unit))
        return f"restarted {unit}"

    def check_update(self) -> str:
        self.calls.append(("check-update", ""))
        return "no update"

    def collect_logs(self) -> list[str]:
        self.calls.append(("collect-logs", ""))
        return ["journal line 1", "journal line 2"]

    def wipe(self) -> None:
        self.calls.append(("wipe", ""))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app: Any, port: int) -> Iterator[str]:
    """uvicorn on ``port`` in a thread until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:  # pragma: no cover
        server.should_exit = True
        raise RuntimeError("test server never answered")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def world(make_app: Any) -> Iterator[tuple[FleetWorld, Any]]:
    from conftest import Api

    app = make_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        yield build_world(Api(client)), app


def _enrol(world: FleetWorld, tpm: Any, serial: str = "agent-1") -> DeviceIdentity:
    return world.enrol(tpm, world.create_key(), serial=serial)


def _agent(
    world: FleetWorld, tpm: Any, identity: DeviceIdentity, url: str, data: Path, **kw: Any
) -> tuple[Agent, RecordingActions]:
    signer = TpmRequestSigner(tpm, identity, world.ctx.clock)
    http = HttpClient(url, signer=signer)
    actions = RecordingActions()

    def open_channel(headers: Any) -> websocket.Channel:
        return websocket.connect(url, "/v1/device/channel", headers, timeout=5)

    options = AgentOptions(
        heartbeat_seconds=0.2,
        once_wait_seconds=1.0,
        backoff_base_seconds=0.05,
        backoff_max_seconds=0.2,
        slot="A",
    )
    return Agent(http, data, actions, open_channel, world.ctx.clock, options=options, **kw), actions


def _queue(
    world: FleetWorld, device_id: str, kind: str, role: str = "operator", **body: Any
) -> Any:
    return world.client.post(
        f"/v1/fleets/{world.fleet_id}/devices/{device_id}/commands",
        json={"kind": kind, **body},
        headers=world.headers[role],
    )


def _commands(world: FleetWorld, device_id: str) -> list[dict[str, Any]]:
    answer = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{device_id}/commands",
        headers=world.headers["viewer"],
    )
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()
    return rows


def test_a_signed_request_deletes_every_devices_expired_nonces(world: Any, tmp_path: Path) -> None:
    """The nonce key leads with the nonce (ADR 0050): a request clears the expired nonces
    of every device, not only its own, and keeps those still inside the window."""
    from sqlalchemy import insert, select

    from bastion.server.agent.models import DeviceRequestNonce

    w, _app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    silent = _enrol(w, SoftwareTpm(tmp_path / "silent.state"), serial="agent-silent")
    now = w.ctx.clock.now()
    with w.ctx.db.engine.begin() as conn:
        conn.execute(
            insert(DeviceRequestNonce),
            [
                {
                    "device_id": silent.device_id,
                    "nonce": "old",
                    "expires_at": now - dt.timedelta(seconds=1),
                },
                {
                    "device_id": silent.device_id,
                    "nonce": "live",
                    "expires_at": now + dt.timedelta(seconds=60),
                },
            ],
        )
    http = HttpClient.over(w.client, signer=TpmRequestSigner(tpm, identity, w.ctx.clock))
    assert http.call_object("GET", "/v1/device")["id"] == identity.device_id
    with w.ctx.db.engine.connect() as conn:
        rows = conn.execute(select(DeviceRequestNonce.device_id, DeviceRequestNonce.nonce)).all()
    assert (silent.device_id, "live") in rows and (silent.device_id, "old") not in rows
    assert [d for d, _ in rows].count(identity.device_id) == 1


def test_signed_requests_and_their_refusals(world: Any, tmp_path: Path) -> None:
    w, _app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    signer = TpmRequestSigner(tpm, identity, w.ctx.clock)
    http = HttpClient.over(w.client, signer=signer)
    beat = http.call_object("POST", "/v1/device/heartbeat", {"agent_version": "9.9", "slot": "B"})
    assert beat["pending_commands"] == 0
    assert http.call_object("GET", "/v1/device")["id"] == identity.device_id

    # a replay of the very same signed request is refused
    body = b'{"slot":"A"}'
    headers = dict(signer("POST", "/v1/device/heartbeat", body))
    # the agent's nonce begins with the signing time's millisecond (ADR 0050)
    nonce = re.search(r';nonce="([^"]+)"', headers["Signature-Input"])
    assert nonce is not None
    assert int(nonce[1][:12], 16) == int(w.ctx.clock.now().timestamp() * 1000)
    headers["content-type"] = "application/json"
    first = w.client.post("/v1/device/heartbeat", content=body, headers=headers)
    assert first.status_code == 200, first.text
    again = w.client.post("/v1/device/heartbeat", content=body, headers=headers)
    assert again.status_code == 401 and "already used" in again.text
    # a body that is not the signed one
    headers = dict(signer("POST", "/v1/device/heartbeat", body))
    swapped = w.client.post(
        "/v1/device/heartbeat",
        content=b'{"slot":"Z"}',
        headers={**headers, "content-type": "application/json"},
    )
    assert swapped.status_code == 400 and "Content-Digest" in swapped.text
    # signed for another path
    headers = dict(signer("POST", "/v1/device/heartbeat", b""))
    moved = w.client.post("/v1/device/logs", content=b"", headers=headers)
    assert moved.status_code == 401
    # bearer token and signature together
    headers = dict(signer("GET", "/v1/device", b""))
    both = w.client.get("/v1/device", headers={**headers, **w.device_headers(identity, tpm)})
    assert both.status_code == 401 and "not both" in both.text
    # a signature too old for the window
    headers = dict(signer("GET", "/v1/device", b""))
    w.ctx.clock.advance(301)
    late = w.client.get("/v1/device", headers=headers)
    assert late.status_code == 401 and "window" in late.text
    # the heartbeat landed in the presence operators read
    presence = w.client.get(
        f"/v1/fleets/{w.fleet_id}/devices/{identity.device_id}/presence",
        headers=w.headers["viewer"],
    ).json()
    assert presence["slot"] == "A" and presence["agent_version"] == "9.9"


@pytest.fixture
def signed_only_world(make_app: Any) -> Iterator[tuple[FleetWorld, Any]]:
    from conftest import Api

    app = make_app(require_signed_device_requests=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield build_world(Api(client)), app


def test_a_signed_only_server_refuses_device_api_keys_and_client_certificates(
    signed_only_world: Any, tmp_path: Path
) -> None:
    from cryptography import x509
    from sqlalchemy import select

    from bastion.server.devices.models import Device

    w, app = signed_only_world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)  # enrolment itself uses the provisioning key: unaffected
    # the device's sealed API key, genuine, is refused
    bearer = w.client.get("/v1/device", headers=w.device_headers(identity, tpm))
    assert bearer.status_code == 401
    assert "only signed device requests" in bearer.text and "API key" in bearer.text
    # its genuine client certificate (mTLS) is refused as well
    with w.ctx.db.session(write=False) as session:
        pem = session.execute(
            select(Device.certificate).where(Device.id == identity.device_id)
        ).scalar_one()
        cert = x509.load_pem_x509_certificate(pem.encode())
        with pytest.raises(AuthError, match=r"only signed device requests.*client certificate"):
            w.ctx.auth.resolve(session, None, cert, w.ctx.clock.now())
    # a signed request goes through, and so does the channel
    http = HttpClient.over(w.client, signer=TpmRequestSigner(tpm, identity, w.ctx.clock))
    assert http.call_object("GET", "/v1/device")["id"] == identity.device_id
    with serving(app, _port()) as url:
        agent, _ = _agent(w, tpm, identity, url, tmp_path / "agent-data")
        assert agent.run(once=True) == 0
    # operators are not devices: their tokens still work
    assert w.client.get("/v1/me", headers=w.headers["viewer"]).status_code == 200


def test_the_default_server_still_takes_device_api_keys(world: Any, tmp_path: Path) -> None:
    w, _app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    assert w.client.get("/v1/device", headers=w.device_headers(identity, tpm)).status_code == 200


def test_a_key_from_another_tpm_cannot_speak_for_the_device(world: Any, tmp_path: Path) -> None:
    w, _app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    other = SoftwareTpm(tmp_path / "other.state")
    forged_key = other.create_signing_key("ecc-p256")
    from dataclasses import replace

    forged = replace(identity, key_public=forged_key.public, key_private=forged_key.private)
    http = HttpClient.over(w.client, signer=TpmRequestSigner(other, forged, w.ctx.clock))
    with pytest.raises(AuthError, match="refused"):
        http.call_object("GET", "/v1/device")


def test_commands_run_over_the_channel_and_report(world: Any, tmp_path: Path) -> None:
    w, app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    dev = identity.device_id
    w.client.put(
        f"/v1/fleets/{w.fleet_id}/devices/{dev}/env/GREETING",
        json={"value": 'hi "x"'},
        headers=w.headers["operator"],
    )
    # queued while the device is offline
    assert _queue(w, dev, "reboot").status_code == 201
    w.ctx.clock.advance(1)  # commands run oldest first, by the time they were queued
    assert _queue(w, dev, "restart-service", args={"unit": "app.service"}).status_code == 201
    # RBAC and validation
    assert _queue(w, dev, "reboot", role="viewer").status_code == 403
    assert _queue(w, dev, "wipe").status_code == 400
    assert _queue(w, dev, "restart-service", args={"unit": "../../x"}).status_code == 400
    assert _queue(w, dev, "format-disk").status_code == 400
    with serving(app, _port()) as url:
        agent, actions = _agent(w, tpm, identity, url, tmp_path / "agent-data")
        agent.buffer.append(["app started"])
        assert agent.run(once=True) == 2
        assert actions.calls == [("reboot", ""), ("restart", "app.service")]
        rows = {c["kind"]: c for c in _commands(w, dev)}
        assert rows["reboot"]["status"] == "succeeded"
        assert rows["restart-service"]["output"] == "restarted app.service"
        # config and env for the applications, atomically written
        assert 'GREETING="hi \\"x\\""' in (tmp_path / "agent-data" / "env").read_text()
        assert '"mode": "prod"' in (tmp_path / "agent-data" / "config.json").read_text()
        # logs shipped, the buffer emptied
        logs = w.client.get(
            f"/v1/fleets/{w.fleet_id}/devices/{dev}/logs", headers=w.headers["viewer"]
        ).json()["records"]
        assert any(r["line"] == "app started" for r in logs)
        assert agent.buffer.peek() is None or agent.buffer.peek()[1] == []  # type: ignore[index]
        # a command seen twice (result lost) is answered again, not run again
        again = agent._done()[0]
        assert again["ok"] is True
        # expiry: a command nobody picked up in time is never sent
        assert _queue(w, dev, "collect-logs", ttl_seconds=60).status_code == 201
        w.ctx.clock.advance(120)
        assert [c["status"] for c in _commands(w, dev) if c["kind"] == "collect-logs"] == [
            "expired"
        ]
        assert agent.run(once=True) == 0
        assert ("collect-logs", "") not in actions.calls
        # wipe needs the device id as confirmation, and is audited
        assert _queue(w, dev, "wipe", confirm=dev).status_code == 201
        assert agent.run(once=True) == 1
        assert ("wipe", "") in actions.calls
    events = w.audit_events()
    assert "device.command.wipe" in events and "device.command.result" in events


def test_a_bearer_token_cannot_open_the_channel(world: Any, tmp_path: Path) -> None:
    w, app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    with serving(app, _port()) as url:
        with pytest.raises(AuthError, match="403"):
            websocket.connect(url, "/v1/device/channel", w.device_headers(identity, tpm), timeout=5)
        signer = TpmRequestSigner(tpm, identity, w.ctx.clock)
        headers = dict(signer("GET", "/v1/device/channel", b""))
        websocket.connect(url, "/v1/device/channel", headers, timeout=5).close()
        with pytest.raises(AuthError):  # the same signed upgrade again: a replay
            websocket.connect(url, "/v1/device/channel", headers, timeout=5)


def test_the_agent_survives_a_server_restart_without_losing_logs_or_commands(
    world: Any, tmp_path: Path
) -> None:
    w, app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    dev = identity.device_id
    port = _port()
    with serving(app, port) as url:
        agent, actions = _agent(w, tpm, identity, url, tmp_path / "agent-data")
        thread = threading.Thread(target=lambda: _run_quietly(agent), daemon=True)
        thread.start()
        _until(lambda: _presence(w, dev)["connected"])
        # queued through the same server process: the bus notice wakes the channel at
        # once (the fallback poll is 15 s)
        started = time.monotonic()
        answer = httpx.post(
            f"{url}/v1/fleets/{w.fleet_id}/devices/{dev}/commands",
            json={"kind": "check-update"},
            headers=w.headers["operator"],
        )
        assert answer.status_code == 201, answer.text
        _until(lambda: ("check-update", "") in actions.calls, timeout=5)
        assert time.monotonic() - started < 5
    # the server is down: the agent keeps queueing its own lines and backs off
    _until(lambda: not thread.is_alive() or agent.buffer.size() > 0)
    agent.buffer.append(["written while the server was down"])
    assert _queue(w, dev, "restart-service", args={"unit": "db.service"}).status_code == 201
    time.sleep(0.5)
    with serving(app, port):
        _until(lambda: ("restart", "db.service") in actions.calls, timeout=20)
        _until(
            lambda: any("while the server was down" in r["line"] for r in _logs(w, dev)), timeout=20
        )
        agent.stop()  # while the server is up: the channel closes cleanly
        thread.join(timeout=10)
        assert not thread.is_alive()


def _run_quietly(agent: Agent) -> None:
    with contextlib.suppress(Exception):  # a failure shows in the assertions
        agent.run()


def _presence(w: FleetWorld, dev: str) -> dict[str, Any]:
    answer = w.client.get(
        f"/v1/fleets/{w.fleet_id}/devices/{dev}/presence", headers=w.headers["viewer"]
    )
    result: dict[str, Any] = answer.json()
    return result


def _logs(w: FleetWorld, dev: str) -> list[dict[str, Any]]:
    answer = w.client.get(
        f"/v1/fleets/{w.fleet_id}/devices/{dev}/logs?limit=1000", headers=w.headers["viewer"]
    )
    records: list[dict[str, Any]] = answer.json()["records"]
    return records


def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def test_a_copied_identity_without_the_tpm_cannot_connect(world: Any, tmp_path: Path) -> None:
    """swtpm-backed device: its state folder copied elsewhere, next to a fresh TPM."""
    w, app = world
    with tss_tpm(tmp_path / "tpm") as tpm:
        identity = _enrol(w, tpm, serial="swtpm-1")
        identity.save(tmp_path / "dev")
        with serving(app, _port()) as url:
            agent, _ = _agent(w, tpm, identity, url, tmp_path / "dev" / "agent")
            assert agent.run(once=True) == 0  # the real device connects
            shutil.copytree(tmp_path / "dev", tmp_path / "copy")
            copied = DeviceIdentity.load(tmp_path / "copy")
            with tss_tpm(tmp_path / "other-tpm") as other:
                thief, _ = _agent(w, other, copied, url, tmp_path / "copy" / "agent")
                with pytest.raises((TpmError, AuthError, TransportError)):
                    thief.run(once=True)
                # even a fresh key of the other TPM, claiming to be the device, is refused
                from dataclasses import replace

                key = other.create_signing_key("ecc-p256")
                forged = replace(copied, key_public=key.public, key_private=key.private)
                liar, _ = _agent(w, other, forged, url, tmp_path / "copy" / "agent2")
                with pytest.raises(AuthError):
                    liar.run(once=True)


def test_a_full_data_volume_loses_no_command_and_no_queued_line(world: Any, tmp_path: Path) -> None:
    """The agent's data folder on a 64 KiB tmpfs that fills up (needs root, as CI runs)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and needs root")
    w, app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    dev = identity.device_id
    disk = tmp_path / "agent-data"  # (tmp_path/data is the server's)
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        with serving(app, _port()) as url:
            agent, actions = _agent(w, tpm, identity, url, disk)
            queued = [f"line {i:04d} " + "y" * 900 for i in range(100)]
            written = agent.buffer.append(queued)
            assert 0 < written < len(queued)  # the disk is full now
            filler = disk / "filler"
            with filler.open("wb") as f, contextlib.suppress(OSError):
                f.write(b"\0" * 65536)  # nothing left at all
            assert (
                _queue(w, dev, "restart-service", args={"unit": "web.service"}).status_code == 201
            )
            assert agent.run(once=True) == 1  # no room for done.json or notes: still served
            assert ("restart", "web.service") in actions.calls
            row = _commands(w, dev)[0]
            assert row["status"] == "succeeded"
            filler.unlink()  # space again: everything queued reaches the server
            for _ in range(20):
                agent.ship_logs()
                if not agent.buffer.memory and agent.buffer.size() == 0:
                    break
            lines = [r["line"] for r in _logs(w, dev)]
            assert [ln for ln in lines if ln.startswith("line ")] == queued
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("how", ["revoke", "delete"])
def test_revoking_or_deleting_closes_the_open_channel_at_once(
    world: Any, tmp_path: Path, how: str
) -> None:
    """The operator's revoke/delete publishes ``device:<id>``: the socket closes within 2 s
    (without the notice it would stay open until the channel's 15 s poll)."""
    w, app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    dev = identity.device_id
    with serving(app, _port()) as url:
        signer = TpmRequestSigner(tpm, identity, w.ctx.clock)
        channel = websocket.connect(
            url, "/v1/device/channel", dict(signer("GET", "/v1/device/channel", b"")), timeout=5
        )
        with channel:
            assert channel.receive(timeout=5) == {"type": "synced"}  # nothing was queued
            assert channel.receive(timeout=0.3) is None
            path = f"/v1/fleets/{w.fleet_id}/devices/{dev}"
            if how == "revoke":
                answer = httpx.post(f"{url}{path}/revoke", headers=w.headers["operator"])
                assert answer.status_code == 200, answer.text
            else:
                answer = httpx.delete(f"{url}{path}", headers=w.headers["admin"])
                assert answer.status_code == 204, answer.text
            start = time.monotonic()
            with pytest.raises(TransportError, match="closed by the server"):
                while time.monotonic() - start < 2.0:
                    channel.receive(timeout=0.1)
            assert time.monotonic() - start < 2.0
        # and it cannot come back
        with pytest.raises(AuthError):
            websocket.connect(
                url, "/v1/device/channel", dict(signer("GET", "/v1/device/channel", b"")), timeout=5
            )


def test_the_sweep_delivers_a_command_whose_notice_was_lost(
    world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command row written with no bus notice reaches the open channel at the process's
    next sweep (one query for all its channels), and only the due channel is woken."""
    import datetime as dt

    from bastion import limits
    from bastion.server.channel import service as channel_service
    from bastion.server.channel.models import CommandStatus, DeviceCommand

    monkeypatch.setattr(limits, "CHANNEL_POLL_SECONDS", 0.3)
    w, app = world
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = _enrol(w, tpm)
    other_tpm = SoftwareTpm(tmp_path / "tpm2.state")
    other = _enrol(w, other_tpm, serial="agent-2")
    dev = identity.device_id
    with w.ctx.db.session(write=False) as session:
        assert channel_service.needing_attention(session, [dev, other.device_id]) == set()
        assert channel_service.needing_attention(session, ["f" * 32]) == {"f" * 32}  # gone
    with serving(app, _port()) as url:
        signer = TpmRequestSigner(tpm, identity, w.ctx.clock)
        headers = dict(signer("GET", "/v1/device/channel", b""))
        with websocket.connect(url, "/v1/device/channel", headers, timeout=5) as channel:
            assert channel.receive(timeout=5) == {"type": "synced"}  # nothing was queued
            assert channel.receive(timeout=0.3) is None
            now = w.ctx.clock.now()
            with w.ctx.db.session(write=True) as session:
                row = DeviceCommand(
                    device_id=dev,
                    fleet_id=w.fleet_id,
                    kind="collect-logs",
                    args="{}",
                    status=CommandStatus.QUEUED,
                    created_by="test",
                    created_at=now,
                    expires_at=now + dt.timedelta(hours=1),
                )
                session.add(row)
                session.commit()
                command_id = row.id
                assert channel_service.needing_attention(session, [dev, other.device_id]) == {dev}
            start = time.monotonic()
            message = None
            while message is None and time.monotonic() - start < 3:
                message = channel.receive(timeout=0.1)
            assert message is not None and message["id"] == command_id
            assert message["kind"] == "collect-logs"
