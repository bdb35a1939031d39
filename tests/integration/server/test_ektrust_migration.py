"""Revision 0009 on both databases: existing fleets become certified, new tables appear,
and it downgrades cleanly."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _alembic(db: Any, verb: str, target: str) -> None:
    from alembic import command
    from alembic.config import Config

    from bastion.server.db.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, verb)(cfg, target)


def test_existing_fleets_become_certified(make_app: Any) -> None:
    from sqlalchemy import text

    db = make_app().state.ctx.db
    _alembic(db, "downgrade", "0008_devices")
    assert not {"fleet_ek_cas", "ek_denylist"} & set(db.table_names())
    with db.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO organisations (id, name, require_2fa, created_at) "
                 "VALUES ('o1', 'old', false, CURRENT_TIMESTAMP)")
        )  # fmt: skip
        conn.execute(
            text("INSERT INTO fleets (id, org_id, name, config, created_at) "
                 "VALUES ('f1', 'o1', 'legacy', '{}', CURRENT_TIMESTAMP)")
        )  # fmt: skip
    db.upgrade()
    assert {"fleet_ek_cas", "ek_denylist"} <= set(db.table_names())
    with db.engine.connect() as conn:
        policy = conn.execute(text("SELECT ek_policy FROM fleets WHERE id = 'f1'")).scalar_one()
    assert policy == "certified"
    _alembic(db, "downgrade", "0008_devices")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM fleets WHERE id = 'f1'")).scalar_one()
    db.upgrade()


def test_upgrading_from_0008_keeps_every_row(make_app: Any) -> None:
    """No migration after 0008 may lose rows: SQLite's batch "move and copy" of a parent
    table (organisations, fleets) would cascade-delete its children (fleets, devices)."""
    from sqlalchemy import text

    db = make_app().state.ctx.db
    _alembic(db, "downgrade", "0008_devices")
    with db.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO organisations (id, name, require_2fa, created_at) "
                 "VALUES ('o1', 'old', false, CURRENT_TIMESTAMP)")
        )  # fmt: skip
        conn.execute(
            text("INSERT INTO fleets (id, org_id, name, config, created_at) "
                 "VALUES ('f1', 'o1', 'legacy', '{}', CURRENT_TIMESTAMP)")
        )  # fmt: skip
        conn.execute(
            text("INSERT INTO devices (id, fleet_id, serial, status, ek_hash, key_public, "
                 "cert_serial, cert_sha256, certificate, api_key_hash, api_key_prefix, "
                 "created_at) VALUES ('d1', 'f1', 's1', 'active', :ek, :pub, '01', :c, "
                 "'pem', :k, 'bst_dk_', CURRENT_TIMESTAMP)"),
            {"ek": "a" * 64, "pub": b"\x00", "c": "b" * 64, "k": "c" * 64},
        )  # fmt: skip
    db.upgrade()
    with db.engine.connect() as conn:
        for table, row in (("organisations", "o1"), ("fleets", "f1"), ("devices", "d1")):
            found = conn.execute(text(f"SELECT id FROM {table} WHERE id = :i"), {"i": row})
            assert found.scalar_one_or_none() == row, f"{table} row {row} lost by a migration"
