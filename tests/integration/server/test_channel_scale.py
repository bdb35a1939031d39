"""Channels at scale on PostgreSQL (ADR 0034, amendment 2026-12-06; bench/agents.py).

* A connect storm plus concurrently queued commands on a deliberately small pool:
  every request answers and every command arrives (the pool-exhaustion regression of
  bench/agents.py at 10,000 agents, at small scale), and without the admission limit
  the same load does exhaust the pool (so the test can tell).
* Deleting a fleet, revoking a device: the open channels close on **another** server
  process (a second app with its own PostgreSQL bus), within seconds.
* Presence written in batches: a closed channel never hides a newer one; a device that
  reconnects on another process closes its old channel there (presence on the bus).

Devices are rows with software P-256 identity keys (as in bench/agents.py): the server
verifies every upgrade's RFC 9421 signature against the device's certificate as for a
real agent; the TPM is not what is under test here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from devicekit import FleetWorld, build_world
from fastapi.testclient import TestClient
from test_agent import _port, serving
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bastion import limits
from bastion.server.admission import AdmissionMiddleware, request_concurrency
from bastion.server.channel import service as channel_service
from bastion.server.devices.models import Device, DeviceStatus
from bastion.trust import httpsig
from conftest import PG_FAST, Api, _pg_wipe

pytestmark = pytest.mark.integration


@pytest.fixture
def db_url(pg_database: str | None) -> Iterator[str]:
    """PostgreSQL only: the several-process deployment these tests are about."""
    if pg_database is None:  # conftest's pg_database fails instead under CI=true
        pytest.skip("PostgreSQL is unreachable (Debian package 'postgresql')")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_database}{PG_FAST}"
    _pg_wipe(pg_database)


@pytest.fixture
def world(make_app: Any) -> Iterator[tuple[FleetWorld, Any]]:
    app = make_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        yield build_world(Api(client)), app


def _add_devices(w: FleetWorld, n: int) -> list[tuple[str, ec.EllipticCurvePrivateKey]]:
    """``n`` active devices of the fleet with software identity keys (bench/agents.py)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test device CA")])
    now = w.ctx.clock.now()
    out = []
    with w.ctx.db.session() as session:
        for i in range(n):
            device_id = secrets.token_hex(16)
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
                .issuer_name(ca)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .sign(ca_key, hashes.SHA256())
            )
            session.add(
                Device(
                    id=device_id,
                    fleet_id=w.fleet_id,
                    serial=f"scale-{i}",
                    status=DeviceStatus.ACTIVE,
                    ek_hash="00" * 32,
                    key_public=b"",
                    cert_serial=secrets.token_hex(8),
                    cert_sha256=secrets.token_hex(32),
                    certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
                    api_key_hash=secrets.token_hex(32),
                    api_key_prefix="bst_dev_test",
                    created_at=now,
                )
            )
            out.append((device_id, key))
        session.commit()
    return out


async def _open(
    w: FleetWorld, url: str, device_id: str, key: ec.EllipticCurvePrivateKey
) -> ClientConnection:
    def sign(base: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(base, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    headers = httpsig.sign_request(
        "GET",
        "/v1/device/channel",
        b"",
        key_id=device_id,
        created=int(w.ctx.clock.now().timestamp()),
        nonce=secrets.token_urlsafe(16),
        sign=sign,
    )
    return await connect(
        "ws" + url[len("http") :] + "/v1/device/channel",
        additional_headers=headers,
        open_timeout=30,
    )


async def _next_command(ws: ClientConnection, timeout: float) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message.get("type") == "command":
            return message


async def _closed_within(ws: ClientConnection, seconds: float) -> tuple[float, int | None]:
    """(seconds until the server closed the socket, its close code)."""
    start = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), seconds)
    frame = closed.value.rcvd
    return time.monotonic() - start, frame.code if frame is not None else None


# --- the pool ------------------------------------------------------------------------------


def test_admission_fits_the_pool() -> None:
    """Requests admitted x 3 connections + channel slots + reserve never exceed the pool."""
    assert request_concurrency(30, 4) == 8  # the defaults: 10 + 20 connections, 4 slots
    assert request_concurrency(5, 1) == 1
    assert request_concurrency(1, 8) == 1  # at least one request, whatever the settings
    for capacity in range(6, 200):
        for slots in range(1, 10):
            n = request_concurrency(capacity, slots)
            if capacity - slots - 2 >= 3:
                assert 3 * n + slots + 2 <= capacity
    with pytest.raises(ValueError, match="1 or more"):
        AdmissionMiddleware(lambda *_: None, 0)  # type: ignore[arg-type, return-value]


def test_admission_lets_limit_requests_in_at_once() -> None:
    inside = 0
    most = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.01)
        inside -= 1

    gate = AdmissionMiddleware(app, 3)

    async def main() -> None:
        await asyncio.gather(*(gate({"type": "http"}, None, None) for _ in range(20)))  # type: ignore[arg-type]
        # WebSockets are not counted (the channels bound their own database work)
        await asyncio.gather(*(gate({"type": "websocket"}, None, None) for _ in range(6)))  # type: ignore[arg-type]

    asyncio.run(main())
    assert most == 6  # 3 at most while HTTP requests ran, then 6 sockets at once


@pytest.mark.parametrize("admission", ["fitted", "off"])
def test_a_connect_storm_with_queued_commands_does_not_exhaust_the_pool(
    make_app: Any, admission: str
) -> None:
    """16 channels connect at once while 16 commands are queued concurrently, on a pool
    of 5 connections (2 s timeout). Fitted admission: every request answers 201 and
    every command reaches its channel. Admission off (the old behaviour): requests hold
    connections while waiting for worker threads and the pool times out."""
    n = 16
    extra = {} if admission == "fitted" else {"http_concurrency": 64}
    app = make_app(
        db_pool_size=5, db_max_overflow=0, db_pool_timeout=2.0, channel_db_concurrency=1, **extra
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        w = build_world(Api(client))
    devices = _add_devices(w, n)
    operator = w.headers["operator"]

    async def storm(url: str) -> tuple[list[int], dict[str, str]]:
        sockets = await asyncio.gather(*(_open(w, url, d, k) for d, k in devices))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30, headers=operator) as http:
                answers = await asyncio.gather(
                    *(
                        http.post(
                            f"/v1/fleets/{w.fleet_id}/devices/{d}/commands",
                            json={"kind": "check-update"},
                        )
                        for d, _k in devices
                    )
                )
            got: dict[str, str] = {}
            if admission == "fitted":
                for (device_id, _k), ws in zip(devices, sockets, strict=True):
                    got[device_id] = (await _next_command(ws, 10))["id"]
            return [a.status_code for a in answers], got
        finally:
            for ws in sockets:
                await ws.close()

    with serving(app, _port()) as url:
        statuses, got = asyncio.run(storm(url))
    if admission == "fitted":
        assert statuses == [201] * n
        with w.ctx.db.session(write=False) as session:
            queued = channel_service.attention(
                session, [d for d, _k in devices], ("queued", "sent")
            )[0]
        assert len(got) == n and queued == set(got)  # each device got its own command
    else:
        assert 500 in statuses, statuses  # the pool ran dry: the guard is what helps


# --- fan-out to another process --------------------------------------------------------------


@pytest.mark.parametrize("how", ["fleet-delete", "revoke"])
def test_closing_reaches_the_channels_another_process_holds(make_app: Any, how: str) -> None:
    """Two server processes (two apps, each with its own PostgreSQL bus) on one database:
    channels held by process A close within 3 s when process B deletes their fleet
    (one ``fleet:<id>`` notice) or revokes their device (``device:<id>``)."""
    holder = make_app()
    other = make_app()
    with TestClient(holder, raise_server_exceptions=False) as client:
        w = build_world(Api(client))
    devices = _add_devices(w, 3)
    assert type(holder.state.ctx.bus).__name__ == "PgBus"

    async def scenario(url_a: str, url_b: str) -> list[tuple[float, int | None]]:
        sockets = [await _open(w, url_a, d, k) for d, k in devices]
        try:
            for ws in sockets:  # open, and nothing to do
                assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "synced"}
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sockets[0].recv(), 0.5)
            async with httpx.AsyncClient(base_url=url_b, timeout=30) as http:
                if how == "fleet-delete":
                    answer = await http.delete(
                        f"/v1/fleets/{w.fleet_id}", headers=w.headers["owner"]
                    )
                    assert answer.status_code == 204, answer.text
                    closing = sockets
                else:
                    answer = await http.post(
                        f"/v1/fleets/{w.fleet_id}/devices/{devices[0][0]}/revoke",
                        headers=w.headers["operator"],
                    )
                    assert answer.status_code == 200, answer.text
                    closing = sockets[:1]
            took = [await _closed_within(ws, 3.0) for ws in closing]
            if how == "revoke":  # the other devices' channels stay open
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(sockets[1].recv(), 0.5)
            return took
        finally:
            for ws in sockets:
                await ws.close()

    with serving(holder, _port()) as url_a, serving(other, _port()) as url_b:
        took = asyncio.run(scenario(url_a, url_b))
    assert len(took) == (3 if how == "fleet-delete" else 1)
    for seconds, code in took:
        assert seconds < 3.0
        assert code == 1008  # closed by the server as a policy violation (device gone)


def test_a_device_that_reconnects_on_another_process_leaves_no_channel_behind(
    make_app: Any,
) -> None:
    """Presence on the bus (ADR 0034, 2026-12-07), over LISTEN/NOTIFY: a device's channel
    on process A closes with 4001 within 3 s of the device opening a new one on process
    B; the new one stays open and its presence row stays connected (the superseded
    channel writes no disconnect, although under the tests' fixed clock both channels
    have the same ``connected_at``)."""
    from bastion.server.agent.models import DevicePresence

    holder, other = make_app(), make_app()
    with TestClient(holder, raise_server_exceptions=False) as client:
        w = build_world(Api(client))
    ((device_id, key),) = _add_devices(w, 1)

    def connected() -> bool | None:
        with w.ctx.db.session(write=False) as session:
            row = session.get(DevicePresence, device_id)
            return None if row is None else row.connected

    async def scenario(url_a: str, url_b: str) -> tuple[float, int | None, str, bool | None]:
        old = await _open(w, url_a, device_id, key)
        assert json.loads(await asyncio.wait_for(old.recv(), 10)) == {"type": "synced"}
        new = await _open(w, url_b, device_id, key)
        try:
            assert json.loads(await asyncio.wait_for(new.recv(), 10)) == {"type": "synced"}
            took, code = await _closed_within(old, 3.0)
            reason = old.close_reason or ""
            with pytest.raises(TimeoutError):  # the new channel stays open
                await asyncio.wait_for(new.recv(), 1.0)
            await asyncio.sleep(4 * limits.CHANNEL_BATCH_SECONDS)  # presence batches land
            return took, code, reason, await asyncio.to_thread(connected)
        finally:
            await old.close()
            await new.close()

    with serving(holder, _port()) as url_a, serving(other, _port()) as url_b:
        took, code, reason, still_connected = asyncio.run(scenario(url_a, url_b))
    assert code == 4001 and "superseded by a newer channel" in reason
    assert took < 3.0
    assert still_connected is True


# --- presence ----------------------------------------------------------------------------------


def test_presence_batches_never_hide_a_newer_connection(world: Any) -> None:
    """write_presence: a close of an older connection leaves a newer one connected;
    a close of the current connection clears it; deleted devices are skipped."""
    from bastion.server.agent.models import DevicePresence

    w, _app = world
    (first, _k1), (second, _k2) = _add_devices(w, 2)
    t0 = w.ctx.clock.now()
    t1 = t0 + dt.timedelta(seconds=1)
    with w.ctx.db.session() as session:
        channel_service.write_presence(session, {first: t0, second: t0, "f" * 32: t0}, {})
    with w.ctx.db.session() as session:  # first reconnected (t1) before its old close landed
        channel_service.write_presence(session, {first: t1}, {first: t0, second: t0})
    with w.ctx.db.session(write=False) as session:
        rows = {
            r.device_id: (r.connected, r.connected_at) for r in session.query(DevicePresence).all()
        }
    assert rows == {first: (True, t1), second: (False, t0)}
    assert limits.CHANNEL_BATCH_SECONDS < 1.0
