"""The agent's signed heartbeat requests on the hot path (ADR 0048).

Two apps on one PostgreSQL database, as in test_answer_cache.py: ``world.client`` is the
operators' process (and takes signed requests on FastAPI's path: it has no answer
cache), ``second`` answers signed ``GET``s on the hot path. Negative cases first:

* a replayed signed request is refused (401 "already used") by the hot path, across the
  two paths and the two processes, and twice in one group commit;
* a signature that does not verify, is outside the time window, names an unknown,
  revoked or deleted device, or comes with a bearer token is left to the full path,
  which refuses it with its own message, and its nonce is not stored;
* a device revoked or deleted elsewhere is refused on its next request, though its key
  was kept; a failing verdict closes the gated route; the rate limit still applies;
* a nonce flush that fails answers every request in it with the database's error (500,
  as on the full path) and stores nothing; the cache off means the full path;
* a heartbeat body the model refuses is left to the full path (422);
  a replayed or rate-limited heartbeat writes nothing;
* a writer connection lost (a killed backend) is replaced, the flush sent again: no
  request fails;
* positive: a kept signed answer is the full path's body, served without the app's
  engine (its nonce goes through the writer's own connection); expired nonces are swept
  by a later flush; a hit records presence;
  a signed heartbeat writes what the full path writes (presence, versions, last seen)
  and answers the pending command count, also when a flush carries several.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from bastion.device.agent.signing import TpmRequestSigner
from bastion.errors import AuthError
from bastion.server.agent import writer as writer_module
from bastion.server.agent.service import NONCE_KEEP
from bastion.server.agent.writer import SignedWriter

from .devicekit import FleetWorld, revoke_or_delete
from .test_answer_cache import PATHS, _attested, _layer, _listener, _second, _settle, terminate
from .test_answer_cache import _explicit_flush as _explicit_flush  # noqa: PLC0414 - autouse here too
from .test_answer_cache import second as second  # noqa: PLC0414 - the fixtures, shared
from .test_answer_cache import world as world  # noqa: PLC0414
from .test_attestation import Dev

pytestmark = pytest.mark.integration


def _signer(world: FleetWorld, dev: Dev) -> TpmRequestSigner:
    return TpmRequestSigner(dev.tpm, dev.identity, world.ctx.clock)


def _headers(signer: TpmRequestSigner, path: str) -> dict[str, str]:
    """A fresh signature of ``GET path``, header names in lower case."""
    return {name.lower(): value for name, value in signer("GET", path, b"").items()}


def _get(client: TestClient, signer: TpmRequestSigner, path: str) -> Any:
    return client.get(path, headers=_headers(signer, path))


def _nonces(world: FleetWorld, device_id: str) -> int:
    with world.ctx.db.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM device_request_nonces WHERE device_id = :d"),
                {"d": device_id},
            ).scalar_one()
        )


def _warm(client: TestClient, signer: TpmRequestSigner) -> dict[str, bytes]:
    """Keep the device's three signed answers in ``client``; their bodies."""
    bodies = {}
    for _ in range(2):  # the first fill may be refused: its own presence write notifies
        for path in PATHS:
            answer = _get(client, signer, path)
            assert answer.status_code == 200, (path, answer.text)
            bodies[path] = answer.content
        _settle(client)
    layer = _layer(client)
    before = layer.cached
    for path in PATHS:
        assert _get(client, signer, path).content == bodies[path]
    assert layer.cached - before == len(PATHS), "the warmed answers were not served kept"
    return bodies


# --- negative ---------------------------------------------------------------------------


def test_a_replay_is_refused_on_either_path_and_in_either_process(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "sig-replay")
    signer = _signer(world, dev)
    layer = _layer(second)
    for path in PATHS:
        headers = _headers(signer, path)
        before = layer.signed
        assert second.get(path, headers=headers).status_code == 200
        assert layer.signed - before == 1, "the hot path did not take the signed request"
        again = second.get(path, headers=headers)
        assert again.status_code == 401 and "already used" in again.text, again.text
        assert layer.signed - before == 2, "the replay was not refused by the hot path"
        elsewhere = world.client.get(path, headers=headers)  # the full path, first process
        assert elsewhere.status_code == 401 and "already used" in elsewhere.text
    headers = _headers(signer, "/v1/device")
    assert world.client.get("/v1/device", headers=headers).status_code == 200
    replayed = second.get("/v1/device", headers=headers)  # used on the full path first
    assert replayed.status_code == 401 and "already used" in replayed.text


def test_one_nonce_twice_in_one_flush_is_stored_once(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "sig-twice")
    writer = SignedWriter(world.ctx.db.url, NONCE_KEEP, 60.0)
    now = world.ctx.clock.now()

    async def twice() -> tuple[Any, ...]:
        return await asyncio.gather(
            writer.remember(dev.identity.device_id, "n-twice", now),
            writer.remember(dev.identity.device_id, "n-twice", now),
            writer.remember(dev.identity.device_id, "n-other", now),
            return_exceptions=True,
        )

    results = asyncio.run(twice())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], AuthError) and "already used" in str(results[1])
    assert writer.flushes == 1 and writer.stored == 2
    assert _nonces(world, dev.identity.device_id) == 2
    late = asyncio.run(_one(writer, dev.identity.device_id, "n-twice", now))
    assert isinstance(late, AuthError) and "already used" in str(late)


async def _one(writer: SignedWriter, device_id: str, nonce: str, now: dt.datetime) -> Any:
    try:
        await writer.remember(device_id, nonce, now)
    except Exception as exc:
        return exc
    return None


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("another path", "refused"),
        ("tampered", "refused"),
        ("too old", "window"),
        ("unknown device", "not enrolled"),
        ("with a bearer token", "not both"),
    ],
)
def test_what_does_not_verify_is_left_to_the_full_path_and_stores_no_nonce(
    world: FleetWorld, second: TestClient, tmp_path: Path, case: str, message: str
) -> None:
    dev = _attested(world, tmp_path, f"sig-bad-{case.replace(' ', '-')}")
    signer = _signer(world, dev)
    _warm(second, signer)
    headers = _headers(signer, "/v1/device/config")
    path = "/v1/device/config"
    if case == "another path":
        path = "/v1/device"
    elif case == "tampered":
        headers["signature"] = headers["signature"].replace("bastion=:", "bastion=:AAAA", 1)
    elif case == "too old":
        world.ctx.clock.advance(301)
    elif case == "unknown device":
        headers["signature-input"] = headers["signature-input"].replace(
            dev.identity.device_id, "dev-nobody"
        )
    else:
        headers.update(dev.headers)
    layer = _layer(second)
    stored, before = _nonces(world, dev.identity.device_id), layer.signed
    answer = second.get(path, headers=headers)
    assert answer.status_code == 401, answer.text
    assert message in answer.json()["detail"], answer.text
    assert layer.signed == before, "the hot path answered what it should leave"
    assert _nonces(world, dev.identity.device_id) == stored


@pytest.mark.parametrize("how", ["revoke", "delete"])
def test_a_device_revoked_or_deleted_elsewhere_is_refused_though_its_key_was_kept(
    world: FleetWorld, second: TestClient, tmp_path: Path, how: str
) -> None:
    dev = _attested(world, tmp_path, f"sig-{how}")
    signer = _signer(world, dev)
    _warm(second, signer)
    cache = _listener(second).cache
    assert cache.known(dev.identity.device_id) is not None
    revoke_or_delete(world, dev.identity.device_id, how)
    _settle(second)
    assert cache.known(dev.identity.device_id) is None
    for path in PATHS:
        answer = _get(second, signer, path)
        assert answer.status_code == 401, (path, answer.text)
        if how == "revoke":
            assert "revoked" in answer.json()["detail"]


def test_a_failing_verdict_closes_the_gated_route_to_the_signed_device(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "sig-fail")
    signer = _signer(world, dev)
    _warm(second, signer)
    assert not dev.attest({"selinux": "permissive"})["ok"]
    _settle(second)
    answer = _get(second, signer, "/v1/device/config")
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "attestation_required"
    assert _get(second, signer, "/v1/device").status_code == 200  # not gated


def test_kept_signed_answers_still_take_rate_limit_tokens(
    world: FleetWorld, tmp_path: Path
) -> None:
    app = _second(world, rate_per_second=0.001, rate_burst=4, rate_limit_backend="memory")
    dev = _attested(world, tmp_path, "sig-rate")
    signer = _signer(world, dev)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            codes = [_get(client, signer, "/v1/device/config").status_code]
            _settle(client)  # the fill's presence write has arrived: the next is kept
            codes += [_get(client, signer, "/v1/device/config").status_code for _ in range(2)]
            assert _layer(client).cached >= 1
            codes += [_get(client, signer, "/v1/device/config").status_code for _ in range(2)]
    finally:
        app.state.ctx.db.dispose()
    assert codes == [200, 200, 200, 200, 429], codes


def test_a_failed_nonce_flush_fails_its_requests_and_accepts_nothing(
    world: FleetWorld, second: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = _attested(world, tmp_path, "sig-down")
    signer = _signer(world, dev)
    _warm(second, signer)

    async def down(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import OperationalError

        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(writer_module, "store", down)
    headers = _headers(signer, "/v1/device/config")
    stored = _nonces(world, dev.identity.device_id)
    answer = second.get("/v1/device/config", headers=headers)
    assert answer.status_code == 500 and answer.json()["error"] == "internal", answer.text
    assert _nonces(world, dev.identity.device_id) == stored
    monkeypatch.undo()
    # the same request again, once the database is back: its nonce was never stored
    assert second.get("/v1/device/config", headers=headers).status_code == 200


def test_a_lost_writer_connection_is_replaced_without_a_failed_request(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    from bastion.server.agent.writer import WRITER_APP_NAME

    dev = _attested(world, tmp_path, "sig-lost")
    signer = _signer(world, dev)
    _warm(second, signer)
    writer = second.app.state.ctx.signed_writer  # type: ignore[attr-defined]
    connects = writer.connects
    assert terminate(world, WRITER_APP_NAME), "no writer connection found"
    for path in PATHS:
        assert _get(second, signer, path).status_code == 200, path
    assert writer.connects == connects + 1 and writer.retries == 1


def test_with_the_cache_off_signed_requests_take_the_full_path(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "sig-off")
    signer = _signer(world, dev)
    _warm(second, signer)
    cache = _listener(second).cache
    cache.set_online(False)
    layer = _layer(second)
    before = layer.signed
    headers = _headers(signer, "/v1/device/config")
    assert second.get("/v1/device/config", headers=headers).status_code == 200
    assert layer.signed == before
    again = second.get("/v1/device/config", headers=headers)
    assert again.status_code == 401 and "already used" in again.text


# --- positive ---------------------------------------------------------------------------


def test_kept_signed_answers_are_the_full_paths_bytes_with_only_the_nonce_written(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "sig-bytes")
    signer = _signer(world, dev)
    bodies = _warm(second, signer)
    for path in PATHS:  # the first process answers on FastAPI's path
        assert _get(world.client, signer, path).content == bodies[path], path
    seen: list[str] = []
    from sqlalchemy import event

    engine = second.app.state.ctx.db.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2].split()[0]))
    layer = _layer(second)
    writer = second.app.state.ctx.signed_writer  # type: ignore[attr-defined]
    before, stored = layer.cached, writer.stored
    for path in PATHS:
        assert _get(second, signer, path).content == bodies[path]
    assert layer.cached - before == len(PATHS)
    assert seen == [], "a kept signed answer used the app's engine"
    assert writer.stored - stored == len(PATHS), "each nonce is stored by the writer"


def test_expired_nonces_are_swept_by_a_later_flush(
    world: FleetWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = Dev(world, tmp_path, "sig-sweep")
    monkeypatch.setattr(writer_module, "SWEEP_SECONDS", 0.0)
    writer = SignedWriter(world.ctx.db.url, NONCE_KEEP, 60.0)
    now = world.ctx.clock.now()
    assert asyncio.run(_one(writer, dev.identity.device_id, "n-old", now)) is None
    later = now + NONCE_KEEP + dt.timedelta(seconds=1)
    assert asyncio.run(_one(writer, dev.identity.device_id, "n-new", later)) is None
    with world.ctx.db.engine.connect() as conn:
        left = conn.execute(
            text("SELECT nonce FROM device_request_nonces WHERE device_id = :d"),
            {"d": dev.identity.device_id},
        ).scalars()
        assert sorted(left) == ["n-new"]


def test_a_signed_hit_records_the_devices_presence_when_due(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "sig-seen")
    signer = _signer(world, dev)
    _warm(second, signer)
    cache = _listener(second).cache
    cache.take_due()
    world.ctx.clock.advance(61)
    layer = _layer(second)
    before = layer.cached
    assert _get(second, signer, "/v1/device/config").status_code == 200
    assert layer.cached - before == 1
    assert dev.identity.device_id in cache.take_due()


# --- heartbeats -------------------------------------------------------------------------

HEARTBEAT = "/v1/device/heartbeat"


def _beat(client: TestClient, signer: TpmRequestSigner, body: bytes) -> Any:
    headers = {name.lower(): v for name, v in signer("POST", HEARTBEAT, body).items()}
    headers["content-type"] = "application/json"
    return client.post(HEARTBEAT, content=body, headers=headers)


def _presence(world: FleetWorld, device_id: str) -> dict[str, Any]:
    answer = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{device_id}/presence",
        headers=world.headers["viewer"],
    )
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] = answer.json()
    return shown


def _device(world: FleetWorld, device_id: str) -> dict[str, Any]:
    answer = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{device_id}", headers=world.headers["viewer"]
    )
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] = answer.json()
    return shown


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("an unknown field", b'{"slot":"A","colour":"red"}'),
        ("a bad slot", b'{"slot":"A B"}'),
        ("not an object", b'["slot"]'),
        ("not JSON", b'{"slot":'),
    ],
)
def test_a_heartbeat_the_model_refuses_is_left_to_the_full_path(
    world: FleetWorld, second: TestClient, tmp_path: Path, case: str, body: bytes
) -> None:
    dev = _attested(world, tmp_path, f"sig-hb-{case.replace(' ', '-')}")
    signer = _signer(world, dev)
    assert _beat(second, signer, b'{"slot":"A"}').status_code == 200  # key kept
    layer = _layer(second)
    before = layer.signed
    answer = _beat(second, signer, body)
    assert answer.status_code == 422, answer.text  # the full path's refusal
    assert layer.signed == before, "the hot path took a body its model refuses"


def test_a_replayed_heartbeat_writes_nothing(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "sig-hb-replay")
    signer = _signer(world, dev)
    body = b'{"slot":"A","uptime_seconds":5}'
    headers = {name.lower(): v for name, v in signer("POST", HEARTBEAT, body).items()}
    headers["content-type"] = "application/json"
    assert second.post(HEARTBEAT, content=body, headers=headers).status_code == 200
    first = _presence(world, dev.identity.device_id)
    world.ctx.clock.advance(5)
    again = second.post(HEARTBEAT, content=body, headers=headers)
    assert again.status_code == 401 and "already used" in again.text
    assert _presence(world, dev.identity.device_id) == first


def test_a_rate_limited_heartbeat_writes_nothing(world: FleetWorld, tmp_path: Path) -> None:
    app = _second(world, rate_per_second=0.001, rate_burst=2, rate_limit_backend="memory")
    dev = _attested(world, tmp_path, "sig-hb-rate")
    signer = _signer(world, dev)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            codes = [
                _beat(client, signer, b'{"uptime_seconds":%d}' % i).status_code for i in range(3)
            ]
    finally:
        app.state.ctx.db.dispose()
    assert codes == [200, 200, 429], codes
    assert _presence(world, dev.identity.device_id)["uptime_seconds"] == 1


def test_a_signed_heartbeat_writes_what_the_full_path_writes(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    hot = _attested(world, tmp_path / "hot", "sig-hb-hot")
    full = _attested(world, tmp_path / "full", "sig-hb-full")
    layer = _layer(second)
    reports = [
        b'{"agent_version":"2.0","os_version":"os 7","slot":"B","uptime_seconds":60,'
        b'"log_backlog":3}',
        b'{"slot":"A","uptime_seconds":null}',
        b'{"agent_version":"","log_backlog":0}',
        b"{}",
    ]
    for body in reports:
        before = layer.signed
        fast = _beat(second, _signer(world, hot), body)
        assert layer.signed - before == 1, "the hot path did not take the heartbeat"
        slow = _beat(world.client, _signer(world, full), body)
        assert fast.status_code == slow.status_code == 200, (fast.text, slow.text)
        assert fast.json().keys() == slow.json().keys()
        assert fast.json()["pending_commands"] == slow.json()["pending_commands"] == 0
        shown = {k: v for k, v in _presence(world, hot.identity.device_id).items()}
        other = {k: v for k, v in _presence(world, full.identity.device_id).items()}
        for row in (shown, other):
            row.pop("device_id")
        assert shown == other, body
        mine, theirs = (
            _device(world, hot.identity.device_id),
            _device(world, full.identity.device_id),
        )
        for name in ("agent_version", "os_version", "last_seen_at"):
            assert mine[name] == theirs[name], (name, body)
        world.ctx.clock.advance(30)
    assert _presence(world, hot.identity.device_id)["slot"] == "A"
    assert _device(world, hot.identity.device_id)["agent_version"] == "2.0"


def test_a_heartbeat_answers_the_pending_commands_and_its_version_shows_at_once(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "sig-hb-pending")
    signer = _signer(world, dev)
    _warm(second, signer)
    for kind in ("reboot", "attest"):
        queued = world.client.post(
            f"/v1/fleets/{world.fleet_id}/devices/{dev.identity.device_id}/commands",
            json={"kind": kind},
            headers=world.headers["operator"],
        )
        assert queued.status_code in (200, 201), queued.text
    beat = _beat(second, signer, b'{"agent_version":"3.1"}')
    assert beat.status_code == 200 and beat.json()["pending_commands"] == 2, beat.text
    # no wait for the notification: this process dropped the answer its own write changed
    assert _get(second, signer, "/v1/device").json()["agent_version"] == "3.1"


def test_heartbeats_of_one_device_queued_together_are_written_in_order(
    world: FleetWorld, tmp_path: Path
) -> None:
    """One statement writes a device's presence row once: a device's second and third
    heartbeat wait for the next flushes, and the row ends as the last one left it."""
    dev = Dev(world, tmp_path, "sig-hb-merge")
    writer = SignedWriter(world.ctx.db.url, NONCE_KEEP, 60.0)
    now = world.ctx.clock.now()
    device = dev.identity.device_id

    async def three() -> tuple[Any, ...]:
        return await asyncio.gather(
            writer.remember(device, "hb-1", now, {"slot": "A", "uptime_seconds": 1}),
            writer.remember(device, "hb-2", now, {"uptime_seconds": 2, "log_backlog": 9}),
            writer.remember(device, "hb-3", now, {"slot": "B"}),
            writer.remember(device, "get-1", now),
        )

    assert asyncio.run(three()) == [0, 0, 0, None]
    assert writer.flushes == 3 and writer.stored == 4
    shown = _presence(world, device)
    assert (shown["slot"], shown["uptime_seconds"], shown["log_backlog"]) == ("B", 2, 9)


def test_heartbeats_of_many_devices_and_field_sets_share_one_flush(
    world: FleetWorld, tmp_path: Path
) -> None:
    """Three devices' heartbeats (two field sets), a GET's nonce and a replayed
    heartbeat in one statement: the replay is refused and writes nothing."""
    devs = [Dev(world, tmp_path / str(i), f"sig-hb-many-{i}") for i in range(4)]
    ids = [d.identity.device_id for d in devs]
    writer = SignedWriter(world.ctx.db.url, NONCE_KEEP, 60.0)
    now = world.ctx.clock.now()

    async def first() -> Any:
        return await writer.remember(ids[3], "old", now, {"slot": "A"})

    assert asyncio.run(first()) == 0

    async def many() -> list[Any]:
        return await asyncio.gather(
            writer.remember(ids[0], "a", now, {"slot": "A", "agent_version": "9.0"}),
            writer.remember(ids[1], "b", now, {"uptime_seconds": 5}),
            writer.remember(ids[2], "c", now, {"slot": "B", "agent_version": "9.1"}),
            writer.remember(ids[0], "d", now),
            writer.remember(ids[3], "old", now, {"slot": "B", "agent_version": "6.6"}),
            return_exceptions=True,
        )

    *answers, replay = asyncio.run(many())
    assert answers == [0, 0, 0, None]
    assert isinstance(replay, AuthError) and "already used" in str(replay)
    assert writer.flushes == 2 and writer.stored == 5
    assert _presence(world, ids[3])["slot"] == "A"
    assert _device(world, ids[3])["agent_version"] is None
    assert (_presence(world, ids[0])["slot"], _presence(world, ids[2])["slot"]) == ("A", "B")
    assert _presence(world, ids[1])["uptime_seconds"] == 5
    assert [_device(world, i)["agent_version"] for i in ids[:3]] == ["9.0", None, "9.1"]


def test_a_connection_lost_after_the_statement_ran_fails_the_flush(
    world: FleetWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statement ran (its nonces are there) but the answer was lost: the writer
    cannot know which nonces were new, so it fails the requests (they are sent again
    with new nonces) rather than send the same writes, which would call them replays."""
    import psycopg

    dev = Dev(world, tmp_path, "sig-lost-after")
    writer = SignedWriter(world.ctx.db.url, NONCE_KEEP, 60.0)
    now = world.ctx.clock.now()
    real = writer_module.store

    async def lost_answer(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(writer_module, "store", lost_answer)

    async def once() -> Any:
        return await writer.remember(dev.identity.device_id, "ran", now, {"slot": "A"})

    with pytest.raises(psycopg.OperationalError):
        asyncio.run(once())
    assert writer.retries == 0
    assert _nonces(world, dev.identity.device_id) == 1


def test_metrics_show_the_processs_signed_writes(world: FleetWorld, tmp_path: Path) -> None:
    app = _second(world, metrics_token="m" * 40)
    dev = _attested(world, tmp_path, "sig-metrics")
    signer = _signer(world, dev)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            _warm(client, signer)
            assert _beat(client, signer, b'{"slot":"A"}').status_code == 200
            scrape = client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 40})
            assert scrape.status_code == 200, scrape.text
            values = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in scrape.text.splitlines()
                if line.startswith("bastion_signed_writes")
            }
            writer = client.app.state.ctx.signed_writer  # type: ignore[attr-defined]
            assert values['bastion_signed_writes_total{event="flush"}'] == writer.flushes >= 7
            assert values['bastion_signed_writes_total{event="nonce_stored"}'] == writer.stored >= 7
            assert values['bastion_signed_writes_total{event="connect"}'] == writer.connects == 1
            assert values['bastion_signed_writes_total{event="retry"}'] == 0
    finally:
        app.state.ctx.db.dispose()


# --- device keys kept from a process's start (ADR 0048 amendment) -----------------------


def _warm_app(world: FleetWorld, **settings: Any) -> Any:
    return _second(world, **settings)


def test_a_process_keeps_the_fleets_device_keys_from_its_start(
    world: FleetWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bastion.server import hotpath
    from bastion.server.agent.service import KnownDevice

    active = _attested(world, tmp_path / "a", "sig-warm-a")
    revoked = _attested(world, tmp_path / "r", "sig-warm-r")
    revoke_or_delete(world, revoked.identity.device_id, "revoke")
    loads: list[str] = []
    real = hotpath._known_device

    def counted(ctx: Any, device_id: str) -> Any:
        loads.append(device_id)
        return real(ctx, device_id)

    monkeypatch.setattr(hotpath, "_known_device", counted)
    app = _warm_app(world)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            cache = _listener(client).cache
            deadline = time.monotonic() + 20
            while cache.known(active.identity.device_id) is None:
                assert time.monotonic() < deadline, "the key was not kept at start"
                time.sleep(0.05)
            assert isinstance(cache.known(active.identity.device_id), KnownDevice)
            assert cache.known(revoked.identity.device_id) is None
            answer = _get(client, _signer(world, active), "/v1/device/config")
            assert answer.status_code == 200, answer.text
            assert loads == [], "the signed request loaded a key the process kept at start"
    finally:
        app.state.ctx.db.dispose()


def test_without_the_warmup_a_key_is_loaded_on_first_use(
    world: FleetWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bastion.server import hotpath

    dev = _attested(world, tmp_path, "sig-warm-off")
    loads: list[str] = []
    real = hotpath._known_device
    monkeypatch.setattr(hotpath, "_known_device", lambda ctx, d: loads.append(d) or real(ctx, d))
    app = _warm_app(world, device_key_warmup=False)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            assert _listener(client).cache.known(dev.identity.device_id) is None
            assert _get(client, _signer(world, dev), "/v1/device/config").status_code == 200
            assert loads == [dev.identity.device_id]
    finally:
        app.state.ctx.db.dispose()


def test_the_warmup_walks_every_page_and_keeps_no_key_changed_while_read(
    world: FleetWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of one device: every active device is kept, but one whose change the
    cache heard of while its page was read (the ticket rule)."""
    from bastion.server.agent import warmup

    devs = [_attested(world, tmp_path / str(i), f"sig-warm-page-{i}") for i in range(3)]
    changed = devs[1].identity.device_id
    app = _warm_app(world, device_key_warmup=False)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            cache = _listener(client).cache
            real = warmup._page

            def page(ctx: Any, after: str, limit: int) -> Any:
                found = real(ctx, after, limit)
                if any(k.id == changed for k in found[0]):
                    cache.invalidate(changed)  # as a notification arriving meanwhile
                return found

            monkeypatch.setattr(warmup, "_page", page)
            assert client.portal is not None
            kept = client.portal.call(warmup.warm_keys, client.app.state.ctx, 1)  # type: ignore[attr-defined]
            ids = [d.identity.device_id for d in devs]
            assert cache.known(ids[0]) is not None and cache.known(ids[2]) is not None
            assert cache.known(changed) is None
            assert kept >= 2
    finally:
        app.state.ctx.db.dispose()


def test_a_warmup_whose_database_fails_leaves_the_keys_to_first_use(
    world: FleetWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from bastion.server.agent import warmup

    dev = _attested(world, tmp_path, "sig-warm-down")
    app = _warm_app(world, device_key_warmup=False)

    def down(ctx: Any, after: str, limit: int) -> Any:
        raise ConnectionError("database is away")

    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            monkeypatch.setattr(warmup, "_page", down)
            assert client.portal is not None
            with caplog.at_level("WARNING", logger="bastion.server.agent.warmup"):
                kept = client.portal.call(warmup.warm_keys, client.app.state.ctx)  # type: ignore[attr-defined]
            assert kept == 0
            assert "reading them at start failed after 0 (database is away)" in caplog.text
            assert _get(client, _signer(world, dev), "/v1/device/config").status_code == 200
    finally:
        app.state.ctx.db.dispose()


def test_a_device_whose_certificate_cannot_be_read_is_refused_with_a_reason(
    world: FleetWorld, tmp_path: Path
) -> None:
    """A certificate the database holds but that does not parse: the key page skips the
    device and a single load refuses it (401 naming why), no traceback."""
    from bastion.server.agent import service

    dev = _attested(world, tmp_path, "sig-bad-cert")
    device_id = dev.identity.device_id
    with world.ctx.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE devices SET certificate = :c WHERE id = :d"),
            {
                "c": "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
                "d": device_id,
            },
        )
    with world.ctx.db.session(write=False) as session:
        with pytest.raises(AuthError, match="certificate cannot be read"):
            service.known_device(session, device_id)
        found: list[str] = []
        after: str | None = ""
        while after is not None:
            page, after = service.known_devices(session, after, 500)
            found += [k.id for k in page]
        assert device_id not in found and found, "the page skipped only the bad device"
    answer = _get(world.client, _signer(world, dev), "/v1/device/config")
    assert answer.status_code == 401 and "cannot be read" in answer.text, answer.text
