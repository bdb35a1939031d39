"""The app factory: migrations from empty on both databases, health, error bodies, TLS rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bastion.errors import ConfigError
from bastion.server.settings import ServerSettings

CORE_TABLES = {
    "users",
    "user_tokens",
    "recovery_codes",
    "organisations",
    "org_members",
    "fleets",
    "fleet_members",
    "fleet_env",
    "audit_log",
    "audit_head",
    "alembic_version",
}


def test_migrations_create_every_core_table(app) -> None:
    tables = set(app.state.ctx.db.table_names())
    assert tables >= CORE_TABLES


def test_migrations_upgrade_from_empty_and_are_idempotent(db_url, make_app) -> None:
    from sqlalchemy import text

    app = make_app()
    db = app.state.ctx.db
    with db.engine.connect() as conn:
        heads = {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
    assert "0001_core" in heads or heads  # at least the core head is applied
    # downgrade everything to empty, then upgrade again from nothing
    from alembic import command
    from alembic.config import Config

    from bastion.server.db.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(db.table_names()) <= {"alembic_version"}
    db.upgrade()
    assert set(db.table_names()) >= CORE_TABLES
    second = make_app()  # a restart migrates nothing and works
    assert set(second.state.ctx.db.table_names()) >= CORE_TABLES


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/v1/health").json()["status"] == "ok"
    doc = client.get("/openapi.json").json()
    assert doc["info"]["title"] == "bastion fleet API"
    assert "/v1/auth/login" in doc["paths"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/no-such-route", 404, "not_found"),
        ("DELETE", "/v1/health", 405, "method_not_allowed"),
    ],
)
def test_errors_have_one_json_shape(client, method, path, status, code) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert "Traceback" not in response.text


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path)
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path.resolve() / 'bastion.db'}"
    pg = ServerSettings(database_url="postgresql://u@h/db")
    assert pg.resolved_database_url() == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("host", "tls", "ok"),
    [
        ("127.0.0.1", False, True),
        ("::1", False, True),
        ("localhost", False, True),
        ("0.0.0.0", False, False),
        ("192.0.2.10", False, False),
        ("example.org", False, False),
        ("0.0.0.0", True, True),
    ],
)
def test_plain_http_only_on_loopback(tmp_path: Path, host: str, tls: bool, ok: bool) -> None:
    extra = {"tls_cert": tmp_path / "c.pem", "tls_key": tmp_path / "k.pem"} if tls else {}
    settings = ServerSettings(data_dir=tmp_path, listen_host=host, **extra)
    if ok:
        settings.check_listen()
    else:
        with pytest.raises(ConfigError, match="refusing plain HTTP"):
            settings.check_listen()


def test_half_tls_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="together"):
        ServerSettings(data_dir=tmp_path, tls_cert=tmp_path / "c.pem").check_listen()
    with pytest.raises(ConfigError, match="client-ca"):
        ServerSettings(data_dir=tmp_path, client_ca=tmp_path / "ca.pem").check_listen()
