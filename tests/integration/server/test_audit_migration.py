"""Revision 0011 on a database with audit entries written before it: the chain is
checked and adopted (MACed) on the next start, or the start fails if it is broken."""

from __future__ import annotations

import datetime as dt
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

from .conftest import CHEAP

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


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
def test_legacy_chain_adopted_after_upgrade(db_url: str, tmp_path: Path, broken: bool) -> None:
    db = Database(db_url)
    try:
        _upgrade_to(db, "0010_accounts_hardening")
        _legacy_rows(db, 3)
        if broken:
            with db.engine.begin() as conn:
                conn.execute(sa.text("UPDATE audit_log SET actor = 'user:evil' WHERE seq = 2"))
    finally:
        db.dispose()
    settings = ServerSettings(data_dir=tmp_path / "data", database_url=db_url, **CHEAP)
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
