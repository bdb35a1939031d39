"""Secrets at rest (hardening item 10).

The data folder is 0700 and the SQLite file 0600; TOTP seeds are sealed with the
server key (a ``file:`` key created 0600 on first start); migration 0010 seals seeds
left in plaintext by older servers; the operator client refuses plain ``http://`` to
anything but a loopback host.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from bastion.errors import ConfigError, FormatError, VerificationError
from bastion.io.clock import FixedClock
from bastion.server.app import create_app
from bastion.server.auth import totp
from bastion.server.client import ApiClient, check_server_url
from bastion.server.db.engine import MIGRATIONS_DIR, Database
from bastion.server.secretbox import SecretBox, is_sealed, load_secret_box
from bastion.server.settings import ServerSettings

PASSWORD = "correct horse battery"
CHEAP = {"argon2_time_cost": 1, "argon2_memory_kib": 8, "argon2_parallelism": 1}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fresh_sqlite_server_files_are_private(tmp_path: Path, clock: FixedClock) -> None:
    data = tmp_path / "data"
    app = create_app(ServerSettings(data_dir=data, **CHEAP), clock=clock)
    try:
        assert _mode(data) == 0o700
        assert _mode(data / "bastion.db") == 0o600
        assert _mode(data / "secret.key") == 0o600
        assert (data / "secret.key").stat().st_size == 32
        for companion in ("bastion.db-wal", "bastion.db-shm"):
            if (data / companion).exists():
                assert _mode(data / companion) == 0o600
    finally:
        app.state.ctx.db.dispose()


def test_loose_existing_files_are_tightened(tmp_path: Path, clock: FixedClock) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "bastion.db").touch()
    (data / "bastion.db").chmod(0o644)
    app = create_app(ServerSettings(data_dir=data, **CHEAP), clock=clock)
    app.state.ctx.db.dispose()
    assert _mode(data) == 0o700
    assert _mode(data / "bastion.db") == 0o600


def test_key_readable_by_others_is_refused(tmp_path: Path, clock: FixedClock) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    key = data / "secret.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        create_app(ServerSettings(data_dir=data, **CHEAP), clock=clock)


@pytest.mark.parametrize(
    ("content", "uri_suffix", "fragment"),
    [
        (b"short", "", "expected 32"),
        (b"k" * 33, "", "expected 32"),
        (b"k" * 32, "?passphrase-env=X", "unencrypted file"),
        (None, "", "does not exist"),
    ],
)
def test_bad_secret_keys(tmp_path: Path, content: bytes | None, uri_suffix: str, fragment: str):
    key = tmp_path / "k.key"
    if content is not None:
        key.write_bytes(content)
        key.chmod(0o600)
    with pytest.raises(ConfigError, match=fragment):
        load_secret_box(f"file:{key}{uri_suffix}", create=False)


def test_tpm_key_uri_is_refused_for_now(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only an unencrypted file"):
        load_secret_box(f"tpm:software:{tmp_path}/tpm.state#{tmp_path}/k.tpmkey", create=False)


def test_secret_box_negative_table() -> None:
    box = SecretBox(b"a" * 32)
    other = SecretBox(b"b" * 32)
    sealed = box.seal("JBSWY3DPEHPK3PXP", "totp:alice")
    assert box.open(sealed, "totp:alice") == "JBSWY3DPEHPK3PXP"
    prefix, key_id, body = sealed.split(":")
    flipped = body[:5] + ("A" if body[5] != "A" else "B") + body[6:]
    cases: list[tuple[str, str, type[Exception]]] = [
        ("JBSWY3DPEHPK3PXP", "totp:alice", FormatError),  # plaintext left in the database
        (sealed, "totp:mallory", VerificationError),  # copied onto another user's row
        (f"{prefix}:{key_id}:{flipped}", "totp:alice", VerificationError),  # one flipped bit
        (f"{prefix}:{key_id}:{body[:20]}", "totp:alice", FormatError),  # truncated
        (f"{prefix}:{key_id}:!!!", "totp:alice", FormatError),  # not base64
        (f"sb9:{key_id}:{body}", "totp:alice", FormatError),  # unknown version
    ]
    for value, context, error in cases:
        with pytest.raises(error):
            box.open(value, context)
    with pytest.raises(ConfigError, match="sealed with server key"):
        other.open(sealed, "totp:alice")


def test_totp_seed_is_stored_sealed(api, clock: FixedClock) -> None:
    headers = api.user_and_login("seed@example.org")
    secret = api.client.post("/v1/me/totp", headers=headers).json()["secret"]
    with api.ctx.db.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT totp_secret FROM users")).scalar_one()
    assert is_sealed(stored) and secret not in stored
    step = int(clock.now().timestamp()) // 30
    confirm = api.client.post(
        "/v1/me/totp/confirm", headers=headers, json={"code": totp.code_at(secret, step)}
    )
    assert confirm.status_code == 200, confirm.text


def _alembic(db: Database, target: str, box: Any = None) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["secret_box"] = box
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)


@pytest.fixture
def empty_db_url(db_url: str) -> Iterator[str]:
    """A database with no schema at all: a new SQLite file, or a new PostgreSQL database."""
    if db_url.startswith("sqlite"):
        yield db_url
        return
    import os
    import secrets

    import psycopg

    admin_url = os.environ.get("BASTION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"bastion_mig_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migration_seals_plaintext_seeds(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    try:
        _alembic(db, "0009_enrolment_hardening")
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO users (id, email, password_hash, created_at, disabled, "
                    "totp_secret, totp_enabled) VALUES ('u1', 'old@example.org', 'x', "
                    "'2026-01-01 00:00:00', false, 'JBSWY3DPEHPK3PXP', true)"
                )
            )
        # without the server key the upgrade refuses to leave the seed in plaintext
        with pytest.raises(ConfigError, match="plaintext TOTP secrets"):
            _alembic(db, "heads")
        box = SecretBox(b"s" * 32)
        db.upgrade(secret_box=lambda: box)
        with db.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT totp_secret FROM users")).scalar_one()
        assert is_sealed(stored)
        assert box.open(stored, "totp:u1") == "JBSWY3DPEHPK3PXP"
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://fleet.example.org", True),
        ("https://10.0.0.5:8443", True),
        ("http://127.0.0.1:8443", True),
        ("http://127.8.9.10", True),
        ("http://localhost:8443/", True),
        ("http://[::1]:8443", True),
        ("http://fleet.example.org", False),
        ("http://10.0.0.5:8443", False),
        ("http://127.0.0.1.evil.example:8443", False),
        ("http://0.0.0.0:8443", False),
        ("http://[::ffff:10.0.0.1]:8443", False),
        ("http://user@fleet.example.org", False),
        ("ftp://127.0.0.1", False),
        ("http://", False),
    ],
)
def test_client_refuses_plain_http_off_loopback(url: str, ok: bool) -> None:
    if ok:
        assert check_server_url(url) == url.rstrip("/")
        ApiClient(url).close()
    else:
        with pytest.raises(ConfigError):
            check_server_url(url)
        with pytest.raises(ConfigError):
            ApiClient(url)


def test_clear_error_names_the_host() -> None:
    with pytest.raises(ConfigError, match=r"plain http:// to 'fleet.example.org'.*https://"):
        check_server_url("http://fleet.example.org:8443")


def test_app_on_the_test_client_still_works(client: TestClient) -> None:
    assert client.get("/v1/health").status_code == 200
