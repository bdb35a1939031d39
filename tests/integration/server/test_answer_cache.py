"""The device answer cache on PostgreSQL: what another process changes reaches it, what
it keeps is never wrong (docs/adr/0044-device-answer-cache.md, and 0045: presence written
behind the hits).

Two apps on one database, as two server processes: ``world.client`` is where operators
and devices change things, ``second`` answers heartbeats from its cache. A change made
through the first reaches the second by PostgreSQL's notification; :func:`_settle` waits
for that (a barrier notification: delivered in commit order), which is what a real
second process gets within a fraction of a millisecond. Negative cases first:

* revocation, deletion, a failing verdict, a stale verdict (the fleet's interval), the
  fleet turning gating on, the rate limit: refused by the cached path as by the full one;
* the cache is off while its LISTEN connection is gone, or a watched table's trigger is
  disabled, and empty when it is back;
* presence recorded by a hit is written (once, whichever process records it), also when
  the first try fails and when the server stops;
* every table the three answers read has the trigger; the triggers, the migration and
  :data:`bastion.server.answers.WATCHED` name the same tables;
* positive: kept answers are served without a database statement, byte for byte the
  full path's; a config, env or target change is served at once after it arrives.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from bastion.server.answers import LISTEN_APP_NAME, WATCHED, Listener
from bastion.server.app import create_app
from bastion.server.attestation.models import DEFAULT_INTERVAL
from bastion.server.db.base import Base
from bastion.server.db.migrations.versions.r0026_answer_triggers import PRESENCE, TABLES
from bastion.server.hotpath import DeviceHotPath
from bastion.server.settings import ServerSettings

from .conftest import CHEAP
from .devicekit import FleetWorld, revoke_or_delete
from .test_attestation import Dev, attested_world
from .test_device_fast_path import layer_of

pytestmark = pytest.mark.integration

PATHS = ("/v1/device", "/v1/device/config", "/v1/device/target-release")
#: tables a heartbeat touches that no answer is made of: the rate limit's buckets
#: (applied to every kept answer too, through ``Limiter.try_hit``)
NOT_ANSWER_INPUTS = {"shared_counters"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetWorld]:
    with attested_world("postgresql", tmp_path_factory.mktemp("answers")) as w:
        yield w


@pytest.fixture(autouse=True)
def _explicit_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """The apps a test starts write recorded presence only when the test flushes it
    (:func:`_flush`), so each write is counted where the test expects it;
    :func:`test_the_writer_writes_recorded_presence_by_itself` runs the writer's own loop."""
    import bastion.server.answers as answers

    monkeypatch.setattr(answers, "PRESENCE_FLUSH_SECONDS", 3600.0)


def _second(world: FleetWorld, **settings: Any) -> Any:
    options: dict[str, Any] = {**CHEAP, "device_answer_cache": True, **settings}
    return create_app(
        ServerSettings(
            data_dir=world.ctx.settings.data_dir,
            database_url=world.ctx.db.url,
            webhook_worker=False,
            **options,
        ),
        clock=world.ctx.clock,
        migrate=False,
    )


@pytest.fixture
def second(world: FleetWorld) -> Iterator[TestClient]:
    """A second server process's app on the same database, answer cache on."""
    app = _second(world)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            yield client
    finally:
        app.state.ctx.db.dispose()


def _listener(client: TestClient) -> Listener:
    listener = client.app.state.ctx.answers  # type: ignore[attr-defined]
    assert isinstance(listener, Listener)
    return listener


def _layer(client: TestClient) -> DeviceHotPath:
    layer = layer_of(client.app)
    assert layer is not None
    return layer


def _settle(client: TestClient) -> None:
    """Wait until ``client``'s listener has handled every change committed so far."""
    assert client.portal is not None
    client.portal.call(_listener(client).barrier)


def _statements(client: TestClient) -> list[str]:
    seen: list[str] = []
    engine = client.app.state.ctx.db.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def _warm(client: TestClient, dev: Dev) -> dict[str, bytes]:
    """Fill the cache with the device's three answers; return their bodies."""
    bodies = {}
    for _ in range(2):  # the first fill may be refused: its own last_seen write notifies
        for path in PATHS:
            answer = client.get(path, headers=dev.headers)
            assert answer.status_code == 200, (path, answer.text)
            bodies[path] = answer.content
        _settle(client)
    layer = _layer(client)
    before = layer.cached
    for path in PATHS:
        assert client.get(path, headers=dev.headers).content == bodies[path]
    assert layer.cached - before == len(PATHS), "the warmed answers were not served kept"
    return bodies


def terminate(world: FleetWorld, application_name: str) -> list[Any]:
    """Kill this database's backends of ``application_name`` (not other test workers')."""
    with world.ctx.db.engine.begin() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": application_name},
            ).all()
        )


def _attested(world: FleetWorld, tmp_path: Path, serial: str) -> Dev:
    dev = Dev(world, tmp_path, serial)
    assert dev.attest()["ok"]
    return dev


# --- negative: what the cache must not answer -------------------------------------------


@pytest.mark.parametrize("how", ["revoke", "delete"])
def test_revoking_or_deleting_elsewhere_empties_the_devices_answers(
    world: FleetWorld, second: TestClient, tmp_path: Path, how: str
) -> None:
    dev = _attested(world, tmp_path, f"ans-{how}")
    _warm(second, dev)
    revoke_or_delete(world, dev.identity.device_id, how)
    _settle(second)
    for path in PATHS:
        answer = second.get(path, headers=dev.headers)
        assert answer.status_code == 401, (path, answer.text)


def test_a_failing_verdict_elsewhere_closes_the_gated_routes(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "ans-fail")
    _warm(second, dev)
    assert not dev.attest(posture={"selinux": "permissive"})["ok"]
    _settle(second)
    for path in PATHS[1:]:
        answer = second.get(path, headers=dev.headers)
        assert answer.status_code == 403, (path, answer.text)
        assert answer.json()["error"] == "attestation_required"
    assert second.get(PATHS[0], headers=dev.headers).status_code == 200  # ungated
    assert dev.attest()["ok"]  # passing again restores access
    _settle(second)
    assert all(second.get(p, headers=dev.headers).status_code == 200 for p in PATHS)


def test_a_pass_ends_at_the_fleets_interval_though_the_answer_is_kept(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    url = f"/v1/fleets/{world.fleet_id}/attestation"
    admin = world.headers["admin"]
    assert world.client.put(url, json={"interval_seconds": 120}, headers=admin).status_code == 200
    try:
        dev = _attested(world, tmp_path, "ans-interval")
        _warm(second, dev)
        world.ctx.clock.advance(20)
        _warm(second, dev)  # still within: kept answers served
        world.ctx.clock.advance(101)  # 121 s after the verdict
        for path in PATHS[1:]:
            answer = second.get(path, headers=dev.headers)
            assert answer.status_code == 403 and "within 120 s" in answer.json()["detail"]
    finally:
        r = world.client.put(url, json={"interval_seconds": DEFAULT_INTERVAL}, headers=admin)
        assert r.status_code == 200, r.text


def _last_seen(world: FleetWorld, device_id: str) -> Any:
    """The device's stored ``last_seen_at``, as the aware UTC time it means."""
    with world.ctx.db.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT last_seen_at FROM devices WHERE id = :id"), {"id": device_id}
        ).scalar_one()
    return stored.replace(tzinfo=dt.UTC)  # UtcDateTime stores naive UTC


def _updates(statements: list[str]) -> list[str]:
    return [s for s in statements if s.lstrip().upper().startswith("UPDATE")]


def _flush(client: TestClient) -> int:
    """Write the presence ``client``'s hits recorded now (the writer does it every second)."""
    assert client.portal is not None
    written: int = client.portal.call(_listener(client).flush_presence)
    return written


def test_last_seen_is_still_written_once_a_minute(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    """A minute on, the kept answer is served and is the device's presence: it shows the
    new time at once, and the writer stores that time, once."""
    dev = _attested(world, tmp_path, "ans-seen")
    _warm(second, dev)
    _flush(second)
    world.ctx.clock.advance(61)
    now = world.ctx.clock.now()
    layer, seen = _layer(second), _statements(second)
    before = layer.cached
    answer = second.get("/v1/device", headers=dev.headers)
    assert answer.status_code == 200 and layer.cached - before == 1
    assert answer.json()["last_seen_at"].startswith(now.isoformat()[:19])
    assert _updates(seen) == [], "the hit wrote in the request"
    for path in PATHS:  # the rest of the minute records nothing more
        assert second.get(path, headers=dev.headers).status_code == 200
    assert layer.cached - before == 4
    assert _flush(second) == 1
    assert _last_seen(world, dev.identity.device_id) == now
    assert [u for u in _updates(seen) if "devices" in u.lower()], seen
    assert _flush(second) == 0
    # what the full path shows from the database is what the hit showed
    full = world.client.get("/v1/device", headers=dev.headers).json()["last_seen_at"]
    assert full == answer.json()["last_seen_at"]


def test_a_miss_whose_presence_is_due_has_it_written_behind_too(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "ans-miss-seen")
    _flush(second)
    world.ctx.clock.advance(61)
    now = world.ctx.clock.now()
    seen, cached = _statements(second), _layer(second).cached
    answer = second.get("/v1/device/config", headers=dev.headers)  # nothing kept yet: a miss
    assert answer.status_code == 200 and _layer(second).cached == cached
    assert _updates(seen) == [], "the miss wrote last_seen_at in the request"
    assert _listener(second).cache.due == 1
    assert _flush(second) == 1
    assert _last_seen(world, dev.identity.device_id) == now
    own = second.get("/v1/device", headers=dev.headers)  # shows what was recorded
    assert own.json()["last_seen_at"].startswith(now.isoformat()[:19])


def test_a_presence_write_elsewhere_keeps_the_devices_answers(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    """The once-a-minute ``last_seen_at`` write (here by the other process) notifies
    ``seen:``: this process keeps every answer, shows the new time in the one that shows
    ``last_seen_at``, and does not write it again."""
    dev = _attested(world, tmp_path, "ans-presence")
    _warm(second, dev)
    _flush(second)
    world.ctx.clock.advance(61)
    world_app = world.client.app.state.ctx  # type: ignore[attr-defined]
    assert world.client.get("/v1/device", headers=dev.headers).status_code == 200
    if world_app.answers is not None:  # the first process's own hit recorded it
        world.client.portal.call(world_app.answers.flush_presence)  # type: ignore[union-attr]
    written = _last_seen(world, dev.identity.device_id)
    assert written == world.ctx.clock.now()
    _settle(second)
    layer, seen = _layer(second), _statements(second)
    before = layer.cached
    for path in PATHS[1:]:
        assert second.get(path, headers=dev.headers).status_code == 200
    own = second.get("/v1/device", headers=dev.headers)
    assert layer.cached - before == 3, "a presence write dropped answers"
    assert own.json()["last_seen_at"].startswith(written.isoformat()[:19])
    assert _listener(second).cache.rendered >= 1
    assert _flush(second) == 0 and _updates(seen) == [], seen


def test_presence_recorded_by_two_processes_in_one_minute_is_written_once(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "ans-twice")
    third = _second(world)
    try:
        with TestClient(third, raise_server_exceptions=False) as other:
            _settle(other)
            _warm(second, dev)
            _warm(other, dev)
            _flush(second)
            _flush(other)
            world.ctx.clock.advance(61)
            first_at = world.ctx.clock.now()
            assert second.get("/v1/device/config", headers=dev.headers).status_code == 200
            world.ctx.clock.advance(2)  # the other records before the first's write arrives
            assert other.get("/v1/device/config", headers=dev.headers).status_code == 200
            assert _flush(second) == 1
            assert _flush(other) == 0, "the same minute's presence was written twice"
            assert _last_seen(world, dev.identity.device_id) == first_at
            _settle(other)  # the stored time, not the other's own record, is what it shows
            shown = other.get("/v1/device", headers=dev.headers).json()["last_seen_at"]
            assert shown.startswith(first_at.isoformat()[:19]), (shown, first_at)
    finally:
        third.state.ctx.db.dispose()


@contextlib.contextmanager
def _presence_recorded(
    world: FleetWorld, tmp_path: Path, serial: str
) -> Iterator[tuple[TestClient, Dev, dt.datetime]]:
    """A server process of its own whose kept answer just recorded a device's presence,
    not yet written: (its client, the device, the time recorded)."""
    app = _second(world)
    dev = _attested(world, tmp_path, serial)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            _warm(client, dev)
            _flush(client)
            world.ctx.clock.advance(61)
            at = world.ctx.clock.now()
            assert client.get("/v1/device/config", headers=dev.headers).status_code == 200
            yield client, dev, at
    finally:
        app.state.ctx.db.dispose()


def test_the_writer_writes_recorded_presence_by_itself(
    world: FleetWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bastion.server.answers as answers

    with _presence_recorded(world, tmp_path, "ans-writer") as (client, dev, at):
        assert _listener(client).cache.due == 1
        monkeypatch.setattr(answers, "PRESENCE_FLUSH_SECONDS", 0.05)
        writer = _listener(client)._writer  # asleep for an hour: stop it, on its loop
        assert writer is not None and client.portal is not None
        client.portal.call(writer.cancel)
        client.get("/v1/device/config", headers=dev.headers)  # ensure(): a new writer
        deadline = time.monotonic() + 5
        while _last_seen(world, dev.identity.device_id) != at:
            assert time.monotonic() < deadline, "the writer did not write on its own"
            time.sleep(0.05)
        assert _listener(client).cache.due == 0


def test_presence_that_fails_to_be_written_is_written_on_the_next_try(
    world: FleetWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bastion.server.answers as answers

    with _presence_recorded(world, tmp_path, "ans-retry") as (client, dev, at):
        real = answers.write_presence

        def down(*args: Any) -> int:
            raise OSError("connection refused")

        monkeypatch.setattr(answers, "write_presence", down)
        assert _flush(client) == 0
        assert _listener(client).presence_failures == 1 and _listener(client).cache.due == 1
        monkeypatch.setattr(answers, "write_presence", real)
        assert _flush(client) == 1
        assert _last_seen(world, dev.identity.device_id) == at


def test_presence_still_recorded_when_the_server_stops_is_written(
    world: FleetWorld, tmp_path: Path
) -> None:
    with _presence_recorded(world, tmp_path, "ans-stop") as (client, dev, at):
        assert _listener(client).cache.due == 1
        assert _last_seen(world, dev.identity.device_id) != at
    # the server stopped at the end of the block: the lifespan's close wrote it
    assert _last_seen(world, dev.identity.device_id) == at


def test_kept_answers_still_take_rate_limit_tokens(world: FleetWorld, tmp_path: Path) -> None:
    app = _second(world, rate_per_second=0.001, rate_burst=4, rate_limit_backend="memory")
    dev = _attested(world, tmp_path, "ans-rate")
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            codes = [client.get("/v1/device/config", headers=dev.headers).status_code]
            _settle(client)  # the fill's last_seen write has arrived: the next is kept
            codes += [client.get("/v1/device/config", headers=dev.headers).status_code]
            codes += [client.get("/v1/device/config", headers=dev.headers).status_code]
            assert _layer(client).cached >= 1
            codes += [client.get("/v1/device/config", headers=dev.headers).status_code]
            codes += [client.get("/v1/device/config", headers=dev.headers).status_code]
            assert codes == [200, 200, 200, 200, 429], codes
    finally:
        app.state.ctx.db.dispose()


def test_errors_are_never_kept(world: FleetWorld, second: TestClient, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "ans-never")  # never attested: gated routes refuse
    for _ in range(3):
        answer = second.get("/v1/device/config", headers=dev.headers)
        assert answer.status_code == 403, answer.text
    assert dev.attest()["ok"]
    _settle(second)
    assert second.get("/v1/device/config", headers=dev.headers).status_code == 200


def test_the_cache_is_off_while_its_listener_is_gone(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "ans-off")
    _warm(second, dev)
    listener = _listener(second)
    connects = listener.connects
    assert terminate(world, LISTEN_APP_NAME), "no listener connection found"
    deadline = time.monotonic() + 10
    was_off = False
    while not (listener.cache.online and listener.connects > connects):
        assert time.monotonic() < deadline, "the listener did not notice or did not return"
        second.get("/v1/device", headers=dev.headers)  # the drain meets the dead socket
        was_off = was_off or not listener.cache.online
        time.sleep(0.01)
    assert was_off, "the cache stayed on without its listener"
    # back on, and it started empty: what it holds now was stored after the gap
    assert len(listener.cache) <= 1
    revoke_or_delete(world, dev.identity.device_id, "revoke")
    _settle(second)
    assert second.get("/v1/device/config", headers=dev.headers).status_code == 401


@pytest.mark.parametrize("how", ["disabled", "dropped"])
def test_the_cache_is_off_while_a_trigger_is_missing(
    world: FleetWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    import bastion.server.answers as answers

    caplog.set_level(logging.WARNING, logger="bastion.server.answers")
    monkeypatch.setattr(answers, "LISTEN_CHECK_SECONDS", 0.1)
    app = _second(world)
    dev = _attested(world, tmp_path, f"ans-trigger-{how}")
    statement = {
        "disabled": "ALTER TABLE fleet_env DISABLE TRIGGER bastion_answers",
        "dropped": "DROP TRIGGER bastion_answers ON fleet_env",
    }[how]
    restore = {
        "disabled": "ALTER TABLE fleet_env ENABLE TRIGGER bastion_answers",
        "dropped": "CREATE TRIGGER bastion_answers AFTER INSERT OR UPDATE OR DELETE ON "
        "fleet_env FOR EACH ROW EXECUTE FUNCTION bastion_answers_changed()",
    }[how]
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            _warm(client, dev)
            listener = _listener(client)
            with world.ctx.db.engine.begin() as conn:
                conn.execute(text(statement))
            try:
                deadline = time.monotonic() + 10
                while listener.cache.online:
                    assert time.monotonic() < deadline, "the cache stayed on without a trigger"
                    client.get("/v1/device/config", headers=dev.headers)
                    time.sleep(0.02)
                assert len(listener.cache) == 0
                for _ in range(3):  # off: every request takes the full path, nothing is kept
                    cached = _layer(client).cached
                    assert client.get("/v1/device/config", headers=dev.headers).status_code == 200
                    assert _layer(client).cached == cached and len(listener.cache) == 0
                time.sleep(0.5)  # several retries, still off
                assert not listener.cache.online and listener.problem is not None
                assert "fleet_env.bastion_answers" in listener.problem
            finally:
                with world.ctx.db.engine.begin() as conn:
                    conn.execute(text(restore))
            deadline = time.monotonic() + 10
            while not listener.cache.online:  # back once the trigger is
                assert time.monotonic() < deadline, "the cache did not come back"
                time.sleep(0.05)
    finally:
        app.state.ctx.db.dispose()
    said = [r.getMessage() for r in caplog.records if r.name == "bastion.server.answers"]
    lost = [m for m in said if "triggers are missing or disabled" in m]
    assert len(lost) == 1, said  # once, not once per retry
    assert any("again" in m for m in said), said


# --- the triggers cover what the answers read --------------------------------------------


def _tables_in(statements: list[str]) -> set[str]:
    names = set(Base.metadata.tables)
    found = set()
    for sql in statements:
        for name in re.findall(r'(?:FROM|JOIN|INTO|UPDATE)\s+"?(\w+)"?', sql, re.IGNORECASE):
            if name in names:
                found.add(name)
    return found


def test_every_table_the_answers_read_is_watched(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "ans-tables")
    seen = _statements(second)
    for path in PATHS:  # no rollout
        assert second.get(path, headers=dev.headers).status_code == 200
    release = world.client.post(
        f"/v1/fleets/{world.fleet_id}/releases/external",
        json={
            "url": "https://cdn.example.org/7.0.0.raucb",
            "length": 4096,
            "sha256": "aa" * 32,
            "version": "7.0.0",
            "compatible": "bastion-test",
        },
        headers=world.headers["operator"],
    )
    assert release.status_code == 201, release.text
    started = world.client.post(
        f"/v1/fleets/{world.fleet_id}/rollouts",
        json={"release_id": release.json()["id"], "waves": [{"name": "all", "percent": 100}]},
        headers=world.headers["operator"],
    )
    assert started.status_code == 201, started.text
    try:
        late = _attested(world, tmp_path / "late", "ans-tables-late")
        _settle(second)
        for who in (dev, late):  # a wave to assign (a write), then read
            for _ in range(2):
                answer = second.get("/v1/device/target-release", headers=who.headers)
                assert answer.status_code == 200 and answer.json()["release"] == "7.0.0"
    finally:
        rollout = f"/v1/fleets/{world.fleet_id}/rollouts/{started.json()['id']}"
        aborted = world.client.post(f"{rollout}/abort", headers=world.headers["operator"])
        assert aborted.status_code == 200, aborted.text
    read = _tables_in(seen) - NOT_ANSWER_INPUTS
    assert {"devices", "rollouts", "rollout_devices", "releases"} <= read, read
    assert read <= set(WATCHED), f"read but not watched: {sorted(read - set(WATCHED))}"


def test_the_triggers_the_migration_and_the_watch_list_agree(world: FleetWorld) -> None:
    assert TABLES == WATCHED
    with world.ctx.db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, t.tgname, t.tgargs FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid WHERE t.tgname LIKE 'bastion_answers%'"
            )
        ).all()
    triggers: dict[str, set[str]] = {}
    arguments: dict[tuple[str, str], list[bytes]] = {}
    for table, name, args in rows:
        triggers.setdefault(table, set()).add(name)
        arguments[table, name] = [a for a in bytes(args).split(b"\0") if a]
    assert set(triggers) == set(WATCHED)
    for table, column in WATCHED.items():
        assert triggers[table] == {"bastion_answers", "bastion_answers_truncate"}, table
        want = [c.encode() for c in (column, PRESENCE.get(table)) if c is not None]
        assert arguments[table, "bastion_answers"] == want, table


# --- positive: kept answers are the full path's, and changes arrive -----------------------


def test_kept_answers_are_the_full_paths_bytes_without_a_statement(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "ans-same")
    bodies = _warm(second, dev)
    seen = _statements(second)
    for path in PATHS:
        assert second.get(path, headers=dev.headers).content == bodies[path]
    assert seen == []
    full = TestClient(_second(world, device_answer_cache=False))
    try:
        for path in PATHS:  # the same answer from an app without the cache
            assert full.get(path, headers=dev.headers).content == bodies[path], path
    finally:
        full.app.state.ctx.db.dispose()  # type: ignore[attr-defined]


def test_config_and_env_changes_elsewhere_are_served_once_they_arrive(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "ans-config")
    _warm(second, dev)
    operator = world.headers["operator"]
    fleet = f"/v1/fleets/{world.fleet_id}"
    r = world.client.put(f"{fleet}/env/ANSWERS", json={"value": "fleet"}, headers=operator)
    assert r.status_code == 200, r.text
    try:
        _settle(second)
        got = second.get("/v1/device/config", headers=dev.headers).json()
        assert got["env"]["ANSWERS"] == "fleet"
        r = world.client.put(
            f"{fleet}/devices/{dev.identity.device_id}/env/ANSWERS",
            json={"value": "own"},
            headers=operator,
        )
        assert r.status_code == 204, r.text
        _settle(second)
        got = second.get("/v1/device/config", headers=dev.headers).json()
        assert got["env"]["ANSWERS"] == "own" and got["overridden"] == ["ANSWERS"]
    finally:
        world.client.delete(f"{fleet}/env/ANSWERS", headers=operator)


def test_a_fleet_config_change_elsewhere_is_served_once_it_arrives(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = _attested(world, tmp_path, "ans-fleet-config")
    _warm(second, dev)
    url = f"/v1/fleets/{world.fleet_id}/config"
    before = world.client.get(url, headers=world.headers["operator"]).json()["config"]
    changed = {**before, "answers_round": 4}
    r = world.client.put(url, json={"config": changed}, headers=world.headers["operator"])
    assert r.status_code == 200, r.text
    try:
        _settle(second)
        got = second.get("/v1/device/config", headers=dev.headers).json()
        assert got["config"] == changed
    finally:
        world.client.put(url, json={"config": before}, headers=world.headers["operator"])


def test_enrolling_another_device_keeps_this_ones_answers(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    """Enrolment locks the fleet row with an UPDATE that changes nothing: no process
    drops its answers for it (the trigger skips unchanged rows; the writing process
    skips statements marked ``UNCHANGED_OPTION``). The new device's own row still
    notifies, with its own id."""
    dev = _attested(world, tmp_path, "ans-enrol")
    _warm(second, dev)
    _warm(world.client, dev)  # the enrolling process's own cache too
    Dev(world, tmp_path / "newcomer", "ans-enrol-newcomer")
    _settle(second)
    _settle(world.client)
    for client in (second, world.client):
        layer = _layer(client)
        before = layer.cached
        for path in PATHS:
            assert client.get(path, headers=dev.headers).status_code == 200
        assert layer.cached - before == len(PATHS), "an enrolment dropped this device's answers"


def test_a_change_reaches_the_other_process_without_waiting(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    """No barrier: a revocation elsewhere is refused by the other process as soon as
    PostgreSQL has delivered the notification (well under the 1 s allowed here)."""
    dev = _attested(world, tmp_path, "ans-latency")
    _warm(second, dev)
    revoke_or_delete(world, dev.identity.device_id, "revoke")
    started = time.monotonic()
    while second.get("/v1/device", headers=dev.headers).status_code == 200:
        assert time.monotonic() - started < 1.0, "a revoked device was still served after 1 s"


def test_the_drain_applies_what_reached_the_socket_before_the_listener_runs(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    """The fast path drains the listening socket before each lookup: a notification
    that arrived while the event loop was busy (the listener task had no turn) is
    applied before any kept answer is served."""
    import psycopg

    from bastion.server.answers import CHANNEL
    from bastion.server.bus_pg import libpq_url

    dev = _attested(world, tmp_path, "ans-drain")
    _warm(second, dev)
    listener = _listener(second)

    async def notify_then_drain() -> tuple[int, int]:
        # nothing here awaits, so the listener task cannot run until this returns
        with psycopg.connect(libpq_url(world.ctx.db.url), autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, dev.identity.device_id))
        time.sleep(0.3)  # the notification reaches this process's socket meanwhile
        kept = len(listener.cache)
        listener.drain()
        return kept, len(listener.cache)

    assert second.portal is not None
    kept, after = second.portal.call(notify_then_drain)
    assert (kept, after) == (len(PATHS), 0)


def _answer_triggers(db: Any) -> set[str]:
    if db.engine.dialect.name != "postgresql":
        return set()
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'bastion_answers'")
        ).all()
    return {row[0] for row in rows}


def test_the_migration_goes_down_and_up(make_app: Any) -> None:
    """0026 removes its triggers and function on the way down (SQLite: nothing either way)."""
    from .test_pcr_default_migration import _alembic

    db = make_app().state.ctx.db
    postgres = db.engine.dialect.name == "postgresql"
    assert _answer_triggers(db) == (set(WATCHED) if postgres else set())
    _alembic(db, "downgrade", "0025_verdict_latest_index")
    assert _answer_triggers(db) == set()
    db.upgrade()
    assert _answer_triggers(db) == (set(WATCHED) if postgres else set())


def test_metrics_show_the_processs_cache(world: FleetWorld, tmp_path: Path) -> None:
    app = _second(world, metrics_token="m" * 40)
    dev = _attested(world, tmp_path, "ans-metrics")
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            _settle(client)
            _warm(client, dev)
            scrape = client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 40})
            assert scrape.status_code == 200, scrape.text
            values = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in scrape.text.splitlines()
                if line.startswith(("bastion_device_answer", "bastion_device_presence"))
            }
            cache = _listener(client).cache
            assert values['bastion_device_answers_total{outcome="hit"}'] == cache.hits >= 3
            assert values['bastion_device_answers_total{outcome="stored"}'] == cache.stored
            assert values["bastion_device_answers_kept"] == len(cache) >= 3
            assert values["bastion_device_answer_cache_online"] == 1.0
            assert values["bastion_device_presence_recorded_total"] == cache.presence_recorded
            assert values["bastion_device_presence_pending"] == cache.due
    finally:
        app.state.ctx.db.dispose()
