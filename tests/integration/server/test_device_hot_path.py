"""The device API's hot path stays cheap without weakening revocation (ADR 0034).

* revocation made through one server process bites on the very next request to another
  (two apps on one database; the answer cache of ADR 0044 is in its own tests);
* ``last_seen_at`` is written at most once a minute per device, not on every request;
* the number of SQL statements a gated device request costs is bounded (a regression
  guard for the speed work: counting statements, never timing);
* all of this holds with the heartbeat routes' second request path (ADR 0043) on and
  off (the ``second`` app is built both ways);
* the heartbeat routes run their work in one worker-thread call
  (:func:`bastion.server.attestation.gate.device_call`) and still refuse what the
  dependency chain refused: no credential, a user, a bad or revoked or deleted device
  key, a device over its rate limit, a stale verdict by the fleet's own interval.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import event

from bastion.server.app import create_app
from bastion.server.attestation.models import DEFAULT_INTERVAL
from bastion.server.settings import ServerSettings

from .conftest import CHEAP
from .devicekit import FleetWorld, revoke_or_delete
from .test_attestation import Dev as AttestedDev
from .test_attestation import attested_world_fixture
from .test_device_fast_path import layer_of

pytestmark = pytest.mark.integration

#: SELECTs a device request may cost: authentication (device + fleet) and, on a gated
#: route, the gate (settings + newest verdict + golden count) in one statement (ADR
#: 0043), then the route's own reads: the env (one) for config; for the target release
#: the fleet's active rollout (one), then the fleet's target release (one; this world
#: has no rollout)
BUDGET = {"/v1/device": 1, "/v1/device/target-release": 3, "/v1/device/config": 2}


world = attested_world_fixture("hotpath", webhook_worker=False)


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-only"])
def second(world: FleetWorld, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """A second server process's app on the same database and data folder, with the
    heartbeat routes' second request path (ADR 0043) on or off; without the answer cache
    (ADR 0044), so every request here takes the full path whose statements and refusals
    these tests count (test_answer_cache.py tests the cache on this same set-up)."""
    settings = ServerSettings(
        data_dir=world.ctx.settings.data_dir,
        database_url=world.ctx.db.url,
        webhook_worker=False,
        device_fast_path=request.param,
        device_answer_cache=False,
        **CHEAP,
    )
    app = create_app(settings, clock=world.ctx.clock, migrate=False)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        app.state.ctx.db.dispose()


def _serial(second: TestClient, base: str) -> str:
    """A serial of its own for each way ``second`` is built (one fleet serves both)."""
    fast = second.app.state.ctx.settings.device_fast_path  # type: ignore[attr-defined]
    return f"{base}-{'fast' if fast else 'fastapi'}"


def _statements(client: TestClient) -> list[str]:
    seen: list[str] = []
    engine = client.app.state.ctx.db.engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2].split()[0]))
    return seen


@pytest.mark.parametrize("how", ["revoke", "delete"])
def test_revoking_or_deleting_through_one_process_bites_on_the_next_request_to_another(
    world: FleetWorld, second: TestClient, tmp_path: Path, how: str
) -> None:
    dev = AttestedDev(world, tmp_path, _serial(second, f"hot-{how}"))
    assert dev.attest()["ok"]
    for path in BUDGET:
        assert second.get(path, headers=dev.headers).status_code == 200, path
    revoke_or_delete(world, dev.identity.device_id, how)
    layer = layer_of(second.app)
    before = layer.answered if layer is not None else 0
    assert _refusals(second, dev.headers) == {(p, 401, "unauthenticated") for p in BUDGET}
    if layer is not None:  # the fast path itself refused them, not FastAPI behind it
        assert layer.answered - before == len(BUDGET)
    if how == "revoke":
        for path in BUDGET:
            assert "revoked" in second.get(path, headers=dev.headers).json()["detail"], path


def test_last_seen_is_written_once_a_minute(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    dev = AttestedDev(world, tmp_path, _serial(second, "hot-seen"))
    assert dev.attest()["ok"]
    second.get("/v1/device", headers=dev.headers)  # whatever was stale is written now
    seen = _statements(second)
    for _ in range(5):
        assert second.get("/v1/device/config", headers=dev.headers).status_code == 200
    assert "UPDATE" not in seen
    world.ctx.clock.advance(61)
    seen.clear()
    answer = second.get("/v1/device", headers=dev.headers)
    assert answer.status_code == 200
    assert seen.count("UPDATE") == 1
    assert answer.json()["last_seen_at"].startswith(
        world.ctx.clock.now().isoformat()[:19].replace("+00:00", "")
    )


@pytest.mark.parametrize("path", list(BUDGET))
def test_gated_requests_stay_within_their_statement_budget(
    world: FleetWorld, second: TestClient, tmp_path: Path, path: str
) -> None:
    dev = AttestedDev(world, tmp_path, _serial(second, f"hot-budget-{path.rsplit('/', 1)[-1]}"))
    assert dev.attest()["ok"]
    assert second.get(path, headers=dev.headers).status_code == 200  # last_seen written
    seen = _statements(second)
    assert second.get(path, headers=dev.headers).status_code == 200
    selects = [s for s in seen if s.upper() == "SELECT"]
    writes = [s for s in seen if s.upper() in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []
    assert len(selects) <= BUDGET[path], seen


def test_a_heartbeat_reads_no_column_a_device_does_not_read(
    world: FleetWorld, second: TestClient, tmp_path: Path
) -> None:
    """The authentication reads a plain row of the columns the heartbeat routes use, not
    the device's certificate and keys (ADR 0043, second round); target-release reads the
    release's plain columns, not its manifest and golden statement (third round)."""
    dev = AttestedDev(world, tmp_path, _serial(second, "hot-columns"))
    assert dev.attest()["ok"]
    assert second.get("/v1/device", headers=dev.headers).status_code == 200  # last_seen
    returned: list[str] = []  # the names of the columns every statement returned
    engine = second.app.state.ctx.db.engine  # type: ignore[attr-defined]

    def columns(_conn: object, cursor: Any, *_rest: object) -> None:
        returned.extend(d[0] for d in cursor.description or ())

    event.listen(engine, "after_cursor_execute", columns)
    try:
        for path in BUDGET:
            assert second.get(path, headers=dev.headers).status_code == 200, path
    finally:
        event.remove(engine, "after_cursor_execute", columns)
    assert "api_key_prefix" in returned  # the listener saw the heartbeat's rows
    heavy = {
        "certificate",
        "key_public",
        "ak_public",
        "manifest",
        "golden_statement",
        "golden_pcrs",
        "paused_reason",
    }
    assert heavy.isdisjoint(returned), sorted(heavy.intersection(returned))


# --- the one-call heartbeat routes refuse what the dependency chain refused ----------------------


def _refusals(client: TestClient, headers: dict[str, str]) -> set[tuple[str, int, str]]:
    out = set()
    for path in BUDGET:
        r = client.get(path, headers=headers)
        out.add((path, r.status_code, r.json().get("error", "")))
    return out


def test_heartbeat_routes_refuse_anonymous_and_users(world: FleetWorld, second: TestClient) -> None:
    assert _refusals(second, {}) == {(p, 401, "unauthenticated") for p in BUDGET}
    assert _refusals(second, world.headers["admin"]) == {(p, 403, "forbidden") for p in BUDGET}
    bad = {"Authorization": "Bearer bst_dev_" + "A" * 49}  # well-formed length, bad checksum
    assert _refusals(second, bad) == {(p, 401, "unauthenticated") for p in BUDGET}
    basic = {"Authorization": "Basic Zm9vOmJhcg=="}
    assert _refusals(second, basic) == {(p, 401, "unauthenticated") for p in BUDGET}


def test_heartbeat_routes_apply_the_rate_limit(world: FleetWorld, tmp_path: Path) -> None:
    settings = ServerSettings(
        data_dir=world.ctx.settings.data_dir,
        database_url=world.ctx.db.url,
        webhook_worker=False,
        **{**CHEAP, "rate_per_second": 0.001, "rate_burst": 2, "rate_limit_backend": "memory"},
    )
    app = create_app(settings, clock=world.ctx.clock, migrate=False)
    dev = AttestedDev(world, tmp_path, "hot-rate")
    assert dev.attest()["ok"]
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            for path in BUDGET:  # each request takes one token: burst 2 lets two through
                app.state.ctx.limiter.reset(f"device:{dev.identity.device_id}")
                answers = [client.get(path, headers=dev.headers) for _ in range(3)]
                assert [a.status_code for a in answers] == [200, 200, 429], path
                assert answers[2].json()["error"] == "rate_limited"
                assert "retry-after" in answers[2].headers
    finally:
        app.state.ctx.db.dispose()


def test_gate_uses_the_fleets_own_interval(world: FleetWorld, tmp_path: Path) -> None:
    url = f"/v1/fleets/{world.fleet_id}/attestation"
    admin = world.headers["admin"]
    dev = AttestedDev(world, tmp_path, "hot-interval")
    r = world.client.put(url, json={"interval_seconds": 120}, headers=admin)
    assert r.status_code == 200, r.text
    try:
        assert dev.attest()["ok"]
        world.ctx.clock.advance(119)
        for path in ("/v1/device/config", "/v1/device/target-release"):
            assert world.client.get(path, headers=dev.headers).status_code == 200, path
        world.ctx.clock.advance(2)  # 121 s: older than the fleet's 120 s
        for path in ("/v1/device/config", "/v1/device/target-release"):
            r = world.client.get(path, headers=dev.headers)
            assert r.status_code == 403 and r.json()["error"] == "attestation_required", r.text
            assert "within 120 s" in r.json()["detail"]
        assert world.client.get("/v1/device", headers=dev.headers).status_code == 200  # ungated
    finally:
        r = world.client.put(url, json={"interval_seconds": DEFAULT_INTERVAL}, headers=admin)
        assert r.status_code == 200, r.text


def test_heartbeat_routes_hand_one_call_to_a_worker_thread() -> None:
    """No sync dependency (each one a worker-thread hand-off) in front of the one call."""
    from bastion.server.devices.routes import router as devices
    from bastion.server.rollouts.routes import router as rollouts

    found = set()
    for route in [*devices.routes, *rollouts.routes]:
        if not isinstance(route, APIRoute):
            continue
        path = "/v1" + route.path
        if path in BUDGET and "GET" in route.methods:
            found.add(path)
            assert inspect.iscoroutinefunction(route.endpoint), path
            pending = list(route.dependant.dependencies)
            while pending:
                dep = pending.pop()
                assert dep.call is None or inspect.iscoroutinefunction(dep.call), (path, dep)
                pending.extend(dep.dependencies)
    assert found == set(BUDGET)


def test_the_heartbeat_read_session_runs_without_a_transaction_and_the_pool_forgets_it(
    world: FleetWorld,
) -> None:
    """PostgreSQL: the heartbeat's read session is in autocommit (no BEGIN/ROLLBACK round
    trips); a connection handed back to the pool is in a transaction again for the next
    session, write sessions above all. SQLite: the plain deferred read session."""
    from sqlalchemy import text

    db = world.ctx.db
    with pytest.raises(ValueError, match="autocommit"), db.session(write=True, autocommit=True):
        pass
    for _ in range(3):  # the pool may hand out the same connection each time
        with db.session(write=False, autocommit=True) as session:
            assert session.execute(text("SELECT 1")).scalar_one() == 1
            level = session.connection().get_execution_options().get("isolation_level")
            assert level == (None if db.is_sqlite else "AUTOCOMMIT")
            if not db.is_sqlite:
                assert session.connection().connection.dbapi_connection.autocommit is True
        for write in (True, False):
            with db.session(write=write) as session:
                session.execute(text("SELECT 1"))
                assert session.connection().get_execution_options().get("isolation_level") is None
                if not db.is_sqlite:
                    assert session.connection().connection.dbapi_connection.autocommit is False


def test_a_devices_newest_verdict_is_one_index_lookup(world: FleetWorld) -> None:
    """Migration 0025: the gate's ``max(id)`` of a device's verdicts has the index
    ``(device_id, id)``; the single-column index it replaces is gone."""
    from sqlalchemy import inspect as inspect_db

    indexes = {
        ix["name"]: ix["column_names"]
        for ix in inspect_db(world.ctx.db.engine).get_indexes("attestation_verdicts")
    }
    assert indexes.get("ix_attestation_verdicts_device_latest") == ["device_id", "id"]
    assert "ix_attestation_verdicts_device_id" not in indexes
