"""Fixtures for the server suite: a database per backend, an app, a client, principals.

``db_url`` is parametrized over ``sqlite`` (a fresh file per test) and ``postgresql``
(one database created per test run and per xdist worker on the local server
``postgresql://postgres@127.0.0.1:5432/`` with trust auth, dropped afterwards; between
tests every table is emptied). Without a reachable PostgreSQL the ``postgresql`` cases
skip, and fail under ``CI=true``.

``make_app(**overrides)`` builds an app with cheap argon2 and generous rate limits on a
:class:`~bastion.io.clock.FixedClock` (``clock`` fixture) so tests can move time.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bastion.io.clock import FixedClock
from bastion.server.app import create_app
from bastion.server.settings import ServerSettings

# the matrix helpers (server_authz.py, authz_*.py) are importable by plain name
sys.path.insert(0, str(Path(__file__).parent))

PG_ADMIN_URL = os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# tests do not need durable commits; this keeps PostgreSQL from waiting on fsync
PG_FAST = "?options=-csynchronous_commit%3Doff"
IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = pytest.mark.integration


def _pg_connect(dbname: str | None = None) -> Any:
    import psycopg

    url = PG_ADMIN_URL if dbname is None else PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    return psycopg.connect(url, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """Name of a PostgreSQL database created for this run (None when unreachable)."""
    try:
        admin = _pg_connect()
    except Exception as exc:  # psycopg.OperationalError and friends
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}", pytrace=False)
        yield None
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"bastion_test_{worker}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with _pg_connect() as admin2:
            admin2.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_wipe(name: str) -> None:
    with _pg_connect(name) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            ).fetchall()
        ]
        if tables:
            quoted = ", ".join(f'"{t}"' for t in tables)
            conn.execute(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE")
        if "audit_head" in tables:
            conn.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, %s)", ("0" * 64,))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL for an empty (or freshly emptied) database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bastion.db'}"
        return
    name = request.getfixturevalue("pg_database")
    if name is None:
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is unreachable (Debian package 'postgresql')")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}{PG_FAST}"
    _pg_wipe(name)


@pytest.fixture
def clock() -> FixedClock:
    """Test time, starting now (TOTP codes depend on it)."""
    return FixedClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


CHEAP = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 8,
    "argon2_parallelism": 1,
    "rate_per_second": 10_000.0,
    "rate_burst": 10_000,
    "login_rate_per_second": 10_000.0,
    "login_burst": 10_000,
}


@pytest.fixture
def make_app(db_url: str, tmp_path: Path, clock: FixedClock) -> Iterator[Callable[..., FastAPI]]:
    """Build apps on this test's database; every one is disposed at the end."""
    apps: list[FastAPI] = []

    def factory(**overrides: Any) -> FastAPI:
        options: dict[str, Any] = {"data_dir": tmp_path / "data", "database_url": db_url, **CHEAP}
        options.update(overrides)
        app = create_app(ServerSettings(**options), clock=clock)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.state.ctx.db.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def matrix_client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """A module-wide app and client on its own database (the authorization matrix)."""
    tmp = tmp_path_factory.mktemp("matrix")
    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'bastion.db'}"
    else:
        try:
            admin = _pg_connect()
        except Exception as exc:
            if IN_CI:
                pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}", pytrace=False)
            pytest.skip(
                f"PostgreSQL at {PG_ADMIN_URL} is unreachable (Debian package 'postgresql')"
            )
        name = f"bastion_matrix_{secrets.token_hex(4)}"
        with admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}{PG_FAST}"
    clock = FixedClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    app = create_app(ServerSettings(data_dir=tmp / "data", database_url=url, **CHEAP), clock=clock)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        app.state.ctx.db.dispose()
        if name is not None:
            with _pg_connect() as admin2:
                admin2.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def app(make_app: Callable[..., FastAPI]) -> FastAPI:
    return make_app()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


class Api:
    """Small helpers over a TestClient: make users directly, log in over HTTP."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.app: FastAPI = client.app  # type: ignore[assignment]

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def user(self, email: str, password: str = "correct horse battery") -> str:
        """Create a user (as the operator CLI does) and return its id."""
        from bastion.server.users import service

        with self.ctx.db.session() as session:
            return service.create_user(self.ctx, session, email, password, "cli:test").id

    def login(
        self, email: str, password: str = "correct horse battery", **extra: Any
    ) -> dict[str, str]:
        response = self.client.post(
            "/v1/auth/login", json={"email": email, "password": password, **extra}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def user_and_login(self, email: str) -> dict[str, str]:
        self.user(email)
        return self.login(email)


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Any]:
    """A running nats-server of this test's own (natskit.NatsServer), stopped by PID."""
    from natskit import NatsServer

    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()
