"""Revision 0011 on a database with rows written before it: the audit chain is checked
and adopted (MACed) on the next start, or the start fails if it is broken; device
records get their UTF-8 byte size."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bastion.errors import TamperError
from bastion.io.clock import FixedClock
from bastion.server.app import create_app
from bastion.server.audit.chain import GENESIS, entry_hash
from bastion.server.db.base import UtcDateTime
from bastion.server.db.engine import MIGRATIONS_DIR, Database
from bastion.server.settings import ServerSettings

from .conftest import CHEAP, IN_CI, PG_ADMIN_URL, _pg_connect

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all (the shared test database is already migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    try:
        admin = _pg_connect()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is unreachable (Debian package 'postgresql')")
    name = f"bastion_mig_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with _pg_connect() as admin2:
            admin2.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _upgrade_to(db: Database, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _legacy_rows(db: Database, n: int) -> None:
    audit = sa.table(
        "audit_log",
        *(
            sa.column(c)
            for c in ("seq", "actor", "event", "org_id", "details", "prev_hash", "hash")
        ),
        sa.column("at", UtcDateTime),
    )
    prev = GENESIS
    with db.engine.begin() as conn:
        for seq in range(1, n + 1):
            fields = {
                "at": T0,
                "actor": "user:old",
                "event": "old.event",
                "org_id": None,
                "details": "{}",
            }
            digest = entry_hash(seq=seq, prev=prev, **fields)  # type: ignore[arg-type]
            conn.execute(sa.insert(audit).values(seq=seq, prev_hash=prev, hash=digest, **fields))
            prev = digest
        conn.execute(sa.text("UPDATE audit_head SET seq = :n, hash = :h"), {"n": n, "h": prev})


@pytest.mark.parametrize("broken", [False, True])
def test_legacy_chain_adopted_after_upgrade(empty_url: str, tmp_path: Path, broken: bool) -> None:
    db = Database(empty_url)
    try:
        _upgrade_to(db, "0010_accounts_hardening")
        _legacy_rows(db, 3)
        if broken:
            with db.engine.begin() as conn:
                conn.execute(sa.text("UPDATE audit_log SET actor = 'user:evil' WHERE seq = 2"))
    finally:
        db.dispose()
    settings = ServerSettings(data_dir=tmp_path / "data", database_url=empty_url, **CHEAP)
    clock = FixedClock(T0)
    if broken:
        with pytest.raises(TamperError):
            create_app(settings, clock=clock).state.ctx.db.dispose()
        return
    app = create_app(settings, clock=clock)
    try:
        from bastion.server.audit.service import verify_chain

        with app.state.ctx.db.session(write=False) as session:
            assert verify_chain(session).entries == 4  # three adopted + audit.seal
    finally:
        app.state.ctx.db.dispose()


def test_device_record_sizes_filled(empty_url: str, tmp_path: Path) -> None:
    db = Database(empty_url)
    try:
        _upgrade_to(db, "0010_accounts_hardening")
        t = {"t": T0.replace(tzinfo=None)}
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO organisations (id, name, require_2fa, created_at) "
                    "VALUES ('o1', 'old', false, :t)"
                ),
                t,
            )
            conn.execute(
                sa.text(
                    "INSERT INTO fleets (id, org_id, name, config, created_at) "
                    "VALUES ('f1', 'o1', 'f', '{}', :t)"
                ),
                t,
            )
            conn.execute(
                sa.text(
                    "INSERT INTO devices (id, fleet_id, serial, status, ek_hash, key_public, "
                    "cert_serial, cert_sha256, certificate, api_key_hash, api_key_prefix, "
                    "created_at) VALUES ('d1', 'f1', 's', 'active', 'e', :k, '1', 'c', 'pem', "
                    "'h', 'p', :t)"
                ),
                {**t, "k": b"k"},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO device_records (device_id, kind, at, body) "
                    "VALUES ('d1', 'log', :t, :body)"
                ),
                {**t, "body": "héllo €"},
            )
        db.upgrade()
        with db.engine.begin() as conn:
            size = conn.execute(sa.text("SELECT size FROM device_records")).scalar_one()
        assert size == len("héllo €".encode())
    finally:
        db.dispose()
