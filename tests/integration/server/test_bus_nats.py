"""The NATS bus beyond the shared contract (test_bus_contract.py), on a nats-server of the
test's own: interest per channel (the server sees exactly the subscribed subjects), foreign
notices refused, a server that is down at start, a notice published during an outage.

And the point of it all: two app instances ("workers") on one database, a device's
channel held by one, a command queued through the other reaching the device through
NATS, also across a NATS restart (the command is in the database; the bus only wakes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from devicekit import FleetWorld, build_world
from fastapi.testclient import TestClient
from natskit import NatsServer, free_port
from test_agent import serving

from bastion import limits
from bastion.device.agent.signing import TpmRequestSigner
from bastion.errors import BackendError, TransportError
from bastion.io import websocket
from bastion.server.bus import Subscription
from bastion.server.bus_nats import NatsBus
from bastion.tpm.software import SoftwareTpm

pytestmark = pytest.mark.integration


async def _next(sub: Subscription, timeout: float = 5.0) -> str | None:
    it: AsyncIterator[str | None] = sub.__aiter__()
    return await asyncio.wait_for(it.__anext__(), timeout)


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


def test_the_server_sees_one_subject_per_subscribed_channel(nats_server: NatsServer) -> None:
    """Interest, not broadcast: a process subscribes to its own devices' subjects only,
    once per channel however many local subscribers, and drops them with the last one."""

    async def run() -> None:
        bus = NatsBus(nats_server.url)
        try:
            a1 = await bus.subscribe("device:a")
            a2 = await bus.subscribe("device:a")
            b = await bus.subscribe("device:b.c*")
            await _until(
                lambda: nats_server.subjects() == ["bastion.device.a", "bastion.device.b_2Ec_2A"]
            )
            await a1.close()
            await asyncio.sleep(0.2)
            assert nats_server.subjects() == ["bastion.device.a", "bastion.device.b_2Ec_2A"]
            await bus.publish("device:a", "still heard")
            assert await _next(a2) == "still heard"
            await a2.close()
            await b.close()
            await _until(lambda: nats_server.subjects() == [])
            names = [c.get("name") for c in nats_server.connections()]
            assert names == ["bastion-bus"]
        finally:
            await bus.close()

    asyncio.run(run())


def test_foreign_notices_are_dropped(nats_server: NatsServer) -> None:
    """Anyone on the NATS server can publish; what is not a bounded UTF-8 notice is
    dropped (with a warning) and the next good one arrives first."""
    import nats

    async def run() -> str | None:
        bus = NatsBus(nats_server.url)
        raw = await nats.connect(nats_server.url)
        try:
            sub = await bus.subscribe("device:z")
            # the interest is at the server before the test publishes: on a loaded machine
            # the bus's first connection can take longer than its connect timeout, and then
            # subscribe() returns before it (subscribers get None once it is up)
            for _ in range(100):
                await raw.publish("bastion.device.z", b"ready?")
                await raw.flush()
                with contextlib.suppress(TimeoutError):
                    if await _next(sub, timeout=0.2) == "ready?":
                        break
            else:
                raise AssertionError("the bus never heard the server")
            await raw.publish("bastion.device.z", b"x" * (limits.BUS_MESSAGE_MAX_SIZE + 1))
            await raw.publish("bastion.device.z", b"\xff\xfe not utf-8")
            await raw.publish("bastion.device.z", b"good")
            await raw.flush()
            while True:  # late copies of the probe, or None, may come first
                got = await _next(sub)
                if got not in ("ready?", None):
                    return got
        finally:
            await raw.close()
            await bus.close()

    assert asyncio.run(run()) == "good"


def test_a_server_that_is_down_at_start(tmp_path: Path) -> None:
    """Publishing fails fast with the server's name (no credentials); subscribing still
    works, and the interest reaches the server once it is up."""
    server = NatsServer(tmp_path / "late")
    url = f"nats://bastion:hunter2@127.0.0.1:{server.port}"

    async def run() -> tuple[str, float, str | None, bool]:
        bus = NatsBus(url)
        try:
            started = time.monotonic()
            with pytest.raises(BackendError) as caught:
                await bus.publish("device:late", "nobody hears this")
            took = time.monotonic() - started
            sub = await bus.subscribe("device:late")
            await asyncio.to_thread(server.start)
            # the supervisor connects and subscribes; then a notice gets through
            got: str | None = None
            told = False  # the subscriber heard "notices may be lost" (None) once it was up
            for _ in range(100):
                try:
                    await bus.publish("device:late", "now")
                except BackendError:
                    await asyncio.sleep(0.1)
                    continue
                try:
                    got = await _next(sub, timeout=0.3)
                except TimeoutError:
                    continue
                if got is not None:
                    break
                told = True
            return str(caught.value), took, got, told
        finally:
            await bus.close()
            server.stop()

    message, took, got, told = asyncio.run(run())
    assert told  # it subscribed before the first connection: it must re-read
    assert f"nats://127.0.0.1:{server.port}" in message and "hunter2" not in message
    assert took < 5  # the connect timeout, not forever
    assert got == "now"


def test_a_notice_published_during_an_outage_is_sent_on_reconnect(
    nats_server: NatsServer,
) -> None:
    async def run() -> list[str | None]:
        bus = NatsBus(nats_server.url)
        try:
            sub = await bus.subscribe("device:o")
            await asyncio.to_thread(nats_server.stop)
            await asyncio.sleep(0.3)  # the client has noticed
            await bus.publish("device:o", "during")  # buffered, no error
            await asyncio.to_thread(nats_server.start)
            got: list[str | None] = []
            while "during" not in got:
                got.append(await _next(sub, timeout=15))
            return got
        finally:
            await bus.close()

    got = asyncio.run(run())
    assert got[-1] == "during"
    assert None in got  # lost, and back: re-read the state


# -- two app instances on one database -----------------------------------------------------


@pytest.fixture
def two_apps(
    make_app: Any, nats_server: NatsServer, request: pytest.FixtureRequest
) -> Iterator[tuple[FleetWorld, Any, TestClient]]:
    """App A (the device's channel) and app B (the operator's request), one database."""
    from conftest import Api

    bus = getattr(request, "param", "nats")
    options: dict[str, Any] = {"webhook_worker": False, "bus_backend": bus}
    if bus == "nats":
        options["nats_url"] = nats_server.url
    a, b = make_app(**options), make_app(**options)
    with (
        TestClient(a, raise_server_exceptions=False) as client_a,
        TestClient(b, raise_server_exceptions=False) as client_b,
    ):
        yield build_world(Api(client_a)), a, client_b


def _queue(w: FleetWorld, client: TestClient, device_id: str, kind: str) -> str:
    answer = client.post(
        f"/v1/fleets/{w.fleet_id}/devices/{device_id}/commands",
        json={"kind": kind},
        headers=w.headers["operator"],
    )
    assert answer.status_code == 201, answer.text
    command_id: str = answer.json()["id"]
    return command_id


def _receive(channel: websocket.Channel, within: float) -> tuple[dict[str, Any] | None, float]:
    start = time.monotonic()
    while time.monotonic() - start < within:
        message = channel.receive(timeout=0.1)
        if message is not None:
            return message, time.monotonic() - start
    return None, within


def _open_channel(w: FleetWorld, tmp_path: Path, url: str) -> tuple[websocket.Channel, str]:
    signer, device_id = _enrol(w, tmp_path)
    return _connect(signer, url), device_id


def _enrol(w: FleetWorld, tmp_path: Path) -> tuple[TpmRequestSigner, str]:
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = w.enrol(tpm, w.create_key(), serial="nats-1")
    return TpmRequestSigner(tpm, identity, w.ctx.clock), identity.device_id


def _connect(signer: TpmRequestSigner, url: str) -> websocket.Channel:
    headers = dict(signer("GET", "/v1/device/channel", b""))
    channel = websocket.connect(url, "/v1/device/channel", headers, timeout=5)
    assert channel.receive(timeout=5) == {"type": "synced"}  # nothing was queued
    assert channel.receive(timeout=0.3) is None
    return channel


@pytest.mark.parametrize(
    ("two_apps", "arrives"), [("nats", True), ("local", False)], indirect=["two_apps"]
)
def test_a_command_queued_on_one_instance_reaches_a_device_on_the_other(
    two_apps: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arrives: bool
) -> None:
    """With the sweep pushed out to a minute, only the bus can deliver within 2 s: through
    NATS it does; with per-process buses (the control) it does not."""
    monkeypatch.setattr(limits, "CHANNEL_POLL_SECONDS", 60.0)
    w, app_a, client_b = two_apps
    with serving(app_a, free_port()) as url:
        channel, dev = _open_channel(w, tmp_path, url)
        with channel:
            command_id = _queue(w, client_b, dev, "attest")
            message, took = _receive(channel, 2.0)
    if arrives:
        assert message is not None and message["id"] == command_id, message
        assert took < 2.0
    else:
        assert message is None


def test_commands_survive_a_nats_restart(
    two_apps: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    nats_server: NatsServer,
    make_app: Any,
) -> None:
    """The command queued while NATS is down is in the database: it reaches the device
    when the buses are back (their ``None`` makes the channel re-read); later commands
    travel through the new connections at once. Nothing waits for the minute-long sweep.

    The command queued during the outage goes through a third instance whose bus never
    reached NATS, so its notice is lost for certain (not buffered for the reconnect):
    only the device-side bus's "reconnected" ``None`` can deliver it."""
    monkeypatch.setattr(limits, "CHANNEL_POLL_SECONDS", 60.0)
    w, app_a, client_b = two_apps
    app_c = make_app(webhook_worker=False, bus_backend="nats", nats_url=nats_server.url)
    got: list[tuple[str | None, float]] = []
    with serving(app_a, free_port()) as url:
        channel, dev = _open_channel(w, tmp_path, url)
        with channel:
            first = _queue(w, client_b, dev, "attest")
            message, took = _receive(channel, 2.0)
            got.append((message and message["id"], took))
            nats_server.stop()
            time.sleep(0.3)
            with TestClient(app_c, raise_server_exceptions=False) as client_c:
                # 201 although the notice cannot be sent: it is best effort
                during = _queue(w, client_c, dev, "check-update")
            nats_server.start()
            message, took = _receive(channel, 15.0)
            got.append((message and message["id"], took))
            after = _queue(w, client_b, dev, "collect-logs")
            message, took = _receive(channel, 2.0)
            got.append((message and message["id"], took))
    assert [g[0] for g in got] == [first, during, after]
    assert got[0][1] < 2.0 and got[2][1] < 2.0
    rows = client_b.get(
        f"/v1/fleets/{w.fleet_id}/devices/{dev}/commands", headers=w.headers["viewer"]
    ).json()
    assert {row["id"]: row["status"] for row in rows} == {
        first: "sent",
        during: "sent",
        after: "sent",
    }


@pytest.mark.parametrize(
    ("two_apps", "where", "superseded"),
    [("nats", "other", True), ("local", "other", False), ("local", "same", True)],
    indirect=["two_apps"],
)
def test_a_device_that_reconnects_leaves_no_channel_behind(
    two_apps: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, superseded: bool
) -> None:
    """Presence on the bus (ADR 0034, 2026-12-07): the device's channel on instance A
    closes with 4001 within 3 s of the device opening a new one on instance B (through
    NATS) or on A itself (its own bus); the new one stays open and gets the next
    command. With per-process buses across instances (the control) the old channel
    stays open."""
    monkeypatch.setattr(limits, "CHANNEL_POLL_SECONDS", 60.0)
    w, app_a, _client_b = two_apps
    app_b = _client_b.app
    signer, dev = _enrol(w, tmp_path)
    with serving(app_a, free_port()) as url_a, serving(app_b, free_port()) as url_b:
        old = _connect(signer, url_a)
        with old, _connect(signer, url_b if where == "other" else url_a) as new:
            start = time.monotonic()
            closed: str | None = None
            while time.monotonic() - start < 3.0 and closed is None:
                try:
                    assert old.receive(timeout=0.1) is None
                except TransportError as exc:
                    closed = str(exc)
            took = time.monotonic() - start
            assert new.receive(timeout=0.3) is None  # the new channel stays open
            # through the instance that holds the new channel's bus
            command_id = _queue(w, _client_b if where == "other" else w.client, dev, "attest")
            message, _took = _receive(new, 5.0)
    assert message is not None and message["id"] == command_id, message
    if superseded:
        assert closed is not None and "4001" in closed, closed
        assert "superseded by a newer channel" in closed
        assert took < 3.0
    else:
        assert closed is None
