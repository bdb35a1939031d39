"""Revision 0027_nonce_key on both databases: the request-nonce key leads with the nonce
(ADR 0050), the stored nonces survive the change both ways, and the key still refuses a
device's nonce twice while another device may use the same one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from .devicekit import shared_world
from .test_attestation import Dev
from .test_pcr_default_migration import _alembic

pytestmark = pytest.mark.integration

AT = dt.datetime(2026, 12, 8, 12, 0, 0)


def _key(db: Any) -> list[str]:
    return list(
        inspect(db.engine).get_pk_constraint("device_request_nonces")["constrained_columns"]
    )


def _rows(db: Any) -> set[tuple[str, str]]:
    with db.engine.connect() as conn:
        found = conn.execute(text("SELECT device_id, nonce FROM device_request_nonces"))
        return {(str(a), str(b)) for a, b in found}


def _store(db: Any, device: str, nonce: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO device_request_nonces (device_id, nonce, expires_at) "
                "VALUES (:d, :n, :e)"
            ),
            {"d": device, "n": nonce, "e": AT},
        )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_nonce_key_leads_with_the_nonce_both_ways_and_keeps_the_rows(
    backend: str, tmp_path: Path
) -> None:
    with shared_world(backend, tmp_path / "world") as world:
        db = world.ctx.db
        one = Dev(world, tmp_path / "one", "nonce-key-1").identity.device_id
        two = Dev(world, tmp_path / "two", "nonce-key-2").identity.device_id
        _store(db, one, "0190f0a1b2c3-a")
        _store(db, two, "0190f0a1b2c3-a")  # another device may use the same nonce
        _store(db, one, "0190f0a1b2c4-b")
        stored = _rows(db)
        assert _key(db) == ["nonce", "device_id"]

        _alembic(db, "downgrade", "0026_answer_triggers")
        assert _key(db) == ["device_id", "nonce"]
        assert _rows(db) == stored

        _alembic(db, "upgrade", "head")
        assert _key(db) == ["nonce", "device_id"]
        assert _rows(db) == stored
        with pytest.raises(IntegrityError):
            _store(db, one, "0190f0a1b2c3-a")  # the same device's nonce twice
        indexes = {i["name"] for i in inspect(db.engine).get_indexes("device_request_nonces")}
        assert "ix_device_request_nonces_expires_at" in indexes  # the sweep's index stays
        (fk,) = inspect(db.engine).get_foreign_keys("device_request_nonces")
        assert fk["referred_table"] == "devices" and fk["constrained_columns"] == ["device_id"]
        assert fk["options"].get("ondelete", "").upper() == "CASCADE"  # a deleted device's go
