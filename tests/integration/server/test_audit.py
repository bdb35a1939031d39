"""The audit chain: appended in order; edits, removals, reorders, truncation detected."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bastion.errors import TamperError
from bastion.server.audit.service import record, verify_chain


def fill(ctx, n: int = 5) -> None:
    for i in range(n):
        with ctx.db.session() as session:
            record(session, "test.event", f"user:{i}", {"i": i, "note": "café"}, org_id="org1")
            session.commit()


def test_chain_verifies(app) -> None:
    ctx = app.state.ctx
    fill(ctx)
    with ctx.db.session(write=False) as session:
        report = verify_chain(session)
    assert report.entries == 5


def test_uncommitted_entry_rolls_back_with_its_change(app) -> None:
    ctx = app.state.ctx
    fill(ctx, 2)
    with ctx.db.session() as session:
        record(session, "test.rolled_back", "user:x", {})
        session.rollback()
    with ctx.db.session(write=False) as session:
        assert verify_chain(session).entries == 2


TAMPER = {
    "edited details": ["UPDATE audit_log SET details = '[99]' WHERE seq = 3"],
    "edited actor": ["UPDATE audit_log SET actor = 'user:evil' WHERE seq = 2"],
    "edited time": ["UPDATE audit_log SET at = at + interval '1 second' WHERE seq = 1"],
    "removed middle": ["DELETE FROM audit_log WHERE seq = 3"],
    "removed last": ["DELETE FROM audit_log WHERE seq = 5"],
    "removed last and head rewound with renumbering": [
        "DELETE FROM audit_log WHERE seq = 2",
        "UPDATE audit_log SET seq = seq - 1 WHERE seq > 2",
        "UPDATE audit_head SET seq = 4",
    ],
    "reordered": [
        "UPDATE audit_log SET seq = 100 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 100",
    ],
    "rehashed edit without relinking": [
        "UPDATE audit_log SET event = 'x', hash = prev_hash WHERE seq = 4",
    ],
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampering_is_detected(app, case) -> None:
    ctx = app.state.ctx
    fill(ctx)
    sqlite = ctx.db.is_sqlite
    with ctx.db.engine.begin() as conn:
        for statement in TAMPER[case]:
            if sqlite:
                statement = statement.replace(
                    "at + interval '1 second'", "datetime(at, '+1 second')"
                )
            conn.execute(text(statement))
    with ctx.db.session(write=False) as session, pytest.raises(TamperError) as info:
        verify_chain(session)
    assert info.value.stage == "audit"


def test_concurrent_writers_keep_one_chain(app) -> None:
    """Writers in parallel threads queue on the head row; the chain stays linear."""
    import threading

    ctx = app.state.ctx
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(8):
                with ctx.db.session() as session:
                    record(session, "test.concurrent", f"user:{n}", {"i": i})
                    session.commit()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with ctx.db.session(write=False) as session:
        assert verify_chain(session).entries == 32
