"""Settings for several processes: backends follow the database; workers rebuild the
exact settings from the environment their parent exported."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.server.settings import ServerSettings
from bastion.server.tlsproto import export_settings

PG = "postgresql://bastion@db.example.org/bastion"


def test_backends_follow_the_database(tmp_path: Path) -> None:
    sqlite = ServerSettings(data_dir=tmp_path)
    assert (sqlite.resolved_bus_backend(), sqlite.resolved_rate_limit_backend()) == (
        "local",
        "memory",
    )
    pg = ServerSettings(data_dir=tmp_path, database_url=PG)
    assert (pg.resolved_bus_backend(), pg.resolved_rate_limit_backend()) == (
        "postgres",
        "database",
    )
    forced = ServerSettings(
        data_dir=tmp_path, database_url=PG, bus_backend="local", rate_limit_backend="memory"
    )
    assert (forced.resolved_bus_backend(), forced.resolved_rate_limit_backend()) == (
        "local",
        "memory",
    )


def test_a_postgres_bus_needs_postgres(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a PostgreSQL database_url"):
        ServerSettings(data_dir=tmp_path, bus_backend="postgres").resolved_bus_backend()


def test_workers_rebuild_the_parents_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("BASTION_SERVER_")]:
        monkeypatch.delenv(name)
    parent = ServerSettings(
        data_dir=tmp_path,
        database_url=PG,
        listen_port=9443,
        allow_signup=True,
        rate_per_second=3.5,
        login_burst=4,
        webhook_worker=False,
        oidc_scopes="openid email profile",
        bus_backend="nats",
        nats_url="nats://127.0.0.1:4222",
        nats_subject_prefix="site-1.bastion",
    )
    with monkeypatch.context() as m:
        m.setattr(os, "environ", dict(os.environ))
        export_settings(parent)
        assert ServerSettings() == parent


def test_pool_and_serving_settings_reach_the_engine_and_uvicorn(tmp_path: Path) -> None:
    """The pool sizes go to the engine (its capacity fixes the admission limit); uvicorn
    parses with httptools (TLS extension kept) and logs requests only when asked."""
    from bastion.server.db.engine import Database
    from bastion.server.tlsproto import TlsHttpToolsProtocol, uvicorn_config_kwargs

    db = Database(
        f"sqlite:///{tmp_path / 'pool.db'}", pool_size=3, max_overflow=2, pool_timeout=1.5
    )
    try:
        assert db.capacity == 5
        assert db.engine.pool.size() == 3  # type: ignore[attr-defined]
        assert db.engine.pool.timeout() == 1.5  # type: ignore[attr-defined]
    finally:
        db.dispose()
    quiet = uvicorn_config_kwargs(ServerSettings(data_dir=tmp_path, access_log=False))
    assert quiet["http"] is TlsHttpToolsProtocol and quiet["access_log"] is False
    assert uvicorn_config_kwargs(ServerSettings(data_dir=tmp_path))["access_log"] is True
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        ServerSettings(data_dir=tmp_path, channel_db_concurrency=0)


def test_the_default_pool_keeps_every_connection_it_opens(tmp_path: Path) -> None:
    """ADR 0047: no overflow connection to close (and fork again) under load, and the
    same 30 connections at most, so admission lets the same 8 requests run at once."""
    from bastion.server.admission import request_concurrency

    settings = ServerSettings(data_dir=tmp_path, database_url=PG)
    assert (settings.db_pool_size, settings.db_max_overflow) == (30, 0)
    capacity = settings.db_pool_size + settings.db_max_overflow
    assert request_concurrency(capacity, settings.channel_db_concurrency) == 8
