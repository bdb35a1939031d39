"""Audit MACs and checkpoints: an attacker who can write the database but lacks the key.

Each case of the negative table tampers with a real database (SQLite and PostgreSQL)
the way such an attacker could, and verification must fail; a checkpoint taken by an
auditor before the attack catches the truncation the key alone cannot.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, text

from bastion.cli.main import main
from bastion.errors import ConfigError, FormatError, SignatureError, TamperError
from bastion.server.audit.chain import (
    Checkpoint,
    HmacAuditKey,
    PublicAuditKey,
    entry_hash,
    make_checkpoint,
    verify_checkpoint,
)
from bastion.server.audit.keys import create_hmac_key_file, open_audit_key, session_key
from bastion.server.audit.service import checkpoint, record, verify_chain
from bastion.trust.keys import generate_private_key, public_key_to_pem, write_private_key
from bastion.trust.signer import Verifier


def fill(ctx: Any, n: int = 5, start: int = 0) -> None:
    for i in range(start, start + n):
        with ctx.db.session() as session:
            record(session, "test.event", f"user:{i}", {"i": i}, org_id="org1")
            session.commit()


def take_checkpoint(ctx: Any) -> bytes:
    with ctx.db.session(write=False) as session:
        return checkpoint(session, ctx.clock.now()).to_bytes()


def verify(ctx: Any, cp: bytes | None = None) -> Any:
    with ctx.db.session(write=False) as session:
        parsed = verify_checkpoint(cp, session_key(session)) if cp is not None else None
        return verify_chain(session, parsed)


def sql(ctx: Any, *statements: str, **params: Any) -> None:
    with ctx.db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)


def rows(ctx: Any) -> list[Any]:
    with ctx.db.engine.begin() as conn:
        return list(conn.execute(text("SELECT * FROM audit_log ORDER BY seq")).mappings())


def head(ctx: Any) -> Any:
    with ctx.db.engine.begin() as conn:
        return conn.execute(text("SELECT * FROM audit_head WHERE id = 1")).mappings().one()


def rechain(ctx: Any, entries: list[dict[str, Any]]) -> None:
    """What an attacker without the key can do: rewrite the rows and recompute every hash
    link and the head (the MACs stay as they were: making new ones needs the key)."""
    from bastion.server.audit.models import AuditEntry, AuditHead

    prev = "0" * 64
    with ctx.db.session() as session:
        session.execute(delete(AuditEntry))
        for seq, entry in enumerate(entries, start=1):
            fields = {k: entry[k] for k in ("at", "actor", "event", "org_id", "details")}
            digest = entry_hash(seq=seq, prev=prev, **fields)
            session.add(
                AuditEntry(seq=seq, prev_hash=prev, hash=digest, mac=entry["mac"], **fields)
            )
            prev = digest
        hd = session.get(AuditHead, 1)
        assert hd is not None
        hd.seq, hd.hash = len(entries), prev
        session.commit()


def orm_rows(ctx: Any) -> list[dict[str, Any]]:
    from bastion.server.audit.models import AuditEntry

    keys = ("seq", "at", "actor", "event", "org_id", "details", "mac")
    with ctx.db.session(write=False) as session:
        found = session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars()
        return [{k: getattr(e, k) for k in keys} for e in found]


def _edit_rehash(ctx: Any) -> None:
    entries = orm_rows(ctx)
    entries[2]["details"] = '{"i":99}'
    rechain(ctx, entries)


def _delete_relink(ctx: Any) -> None:
    rechain(ctx, [r for r in orm_rows(ctx) if r["seq"] != 3])


def _truncate_head_from_entry(ctx: Any) -> None:
    last = rows(ctx)[3]
    sql(
        ctx,
        "DELETE FROM audit_log WHERE seq = 5",
        "UPDATE audit_head SET seq = 4, hash = :hash, mac = :mac",
        hash=last["hash"],
        mac=last["mac"],
    )


def _reset_and_reseal(ctx: Any) -> None:
    """Strip every MAC and the server id, rewrite, and let the server seal it anew."""
    from bastion.server.app import create_app

    entries = orm_rows(ctx)
    entries[1]["actor"] = "user:innocent"
    rechain(ctx, entries)
    sql(
        ctx, "UPDATE audit_log SET mac = NULL", "UPDATE audit_head SET server_id = NULL, mac = NULL"
    )
    app = create_app(ctx.settings, clock=ctx.clock)
    app.state.ctx.db.dispose()


#: attacks with DB write access but without the key; the chain must fail to verify
#: with the key alone (no checkpoint needed)
TAMPER: dict[str, Callable[[Any], None]] = {
    "entry edited": lambda c: sql(c, "UPDATE audit_log SET details = '[99]' WHERE seq = 3"),
    "entry edited and every hash link recomputed": _edit_rehash,
    "entry deleted mid-chain": lambda c: sql(c, "DELETE FROM audit_log WHERE seq = 3"),
    "entry deleted mid-chain, renumbered and relinked": _delete_relink,
    "tail truncated": lambda c: sql(c, "DELETE FROM audit_log WHERE seq = 5"),
    "tail truncated and head rewritten from the new last entry": _truncate_head_from_entry,
    "entry MAC stripped": lambda c: sql(c, "UPDATE audit_log SET mac = NULL WHERE seq = 2"),
    "entry MAC emptied": lambda c: sql(c, "UPDATE audit_log SET mac = '' WHERE seq = 4"),
    "entry MAC not base64": lambda c: sql(c, "UPDATE audit_log SET mac = '!!' WHERE seq = 1"),
    "entry MAC copied from another entry": lambda c: sql(
        c, "UPDATE audit_log SET mac = (SELECT mac FROM audit_log WHERE seq = 1) WHERE seq = 2"
    ),
    "head MAC stripped": lambda c: sql(c, "UPDATE audit_head SET mac = NULL"),
    "server id changed": lambda c: sql(c, "UPDATE audit_head SET server_id = :s", s="ab" * 16),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tamper_without_key_is_detected(app, case: str) -> None:
    ctx = app.state.ctx
    fill(ctx)
    assert verify(ctx).entries == 5
    TAMPER[case](ctx)
    with pytest.raises(TamperError) as info:
        verify(ctx)
    assert info.value.stage == "audit"


def test_wrong_key_is_detected(make_app, tmp_path: Path) -> None:
    app = make_app()
    fill(app.state.ctx)
    other = tmp_path / "other.key"
    create_hmac_key_file(other)
    app2 = make_app(audit_key=str(other))
    with pytest.raises(TamperError, match="MAC does not verify"):
        verify(app2.state.ctx)


def test_checkpoint_catches_truncation_with_an_old_genuine_head(app) -> None:
    """The one attack the key cannot stop alone: cut the tail and restore a head row
    saved earlier (a backup). The auditor's checkpoint catches it."""
    ctx = app.state.ctx
    fill(ctx, 3)
    saved = dict(head(ctx))
    fill(ctx, 2, start=3)
    cp = take_checkpoint(ctx)
    sql(
        ctx,
        "DELETE FROM audit_log WHERE seq > 3",
        "UPDATE audit_head SET seq = :seq, hash = :hash, mac = :mac",
        seq=saved["seq"],
        hash=saved["hash"],
        mac=saved["mac"],
    )
    assert verify(ctx).entries == 3  # the limit of the key alone, documented
    with pytest.raises(TamperError, match="checkpoint"):
        verify(ctx, cp)


def test_checkpoint_catches_reset_and_reseal(app) -> None:
    ctx = app.state.ctx
    fill(ctx)
    cp = take_checkpoint(ctx)
    _reset_and_reseal(ctx)
    assert verify(ctx).entries == 6  # resealed under a new server id, plus audit.seal
    with pytest.raises(TamperError, match="from audit server"):
        verify(ctx, cp)


def test_checkpoint_holds_while_the_chain_grows(app) -> None:
    ctx = app.state.ctx
    fill(ctx, 3)
    cp = take_checkpoint(ctx)
    fill(ctx, 4, start=3)
    report = verify(ctx, cp)
    assert (report.entries, report.checkpoint_seq) == (7, 3)


def _forge_field(field: str, value: Any) -> Callable[[bytes, Any], bytes]:
    def forge(cp: bytes, _ctx: Any) -> bytes:
        doc = json.loads(cp)
        doc[field] = value
        return json.dumps(doc).encode()

    return forge


def _flip_signature(cp: bytes, _ctx: Any) -> bytes:
    doc = json.loads(cp)
    sig = bytearray(Checkpoint.parse(cp).signature)
    sig[0] ^= 1
    import base64

    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(doc).encode()


def _other_server_same_key(_cp: bytes, ctx: Any) -> bytes:
    with ctx.db.session(write=False) as session:
        key = session_key(session)
        hd = head(ctx)
        return make_checkpoint(key, "cd" * 16, hd["seq"], hd["hash"], ctx.clock.now()).to_bytes()


def _other_server_other_key(_cp: bytes, ctx: Any) -> bytes:
    hd = head(ctx)
    key = HmacAuditKey(os.urandom(32))
    return make_checkpoint(key, hd["server_id"], hd["seq"], hd["hash"], ctx.clock.now()).to_bytes()


def _ahead(_cp: bytes, ctx: Any) -> bytes:
    with ctx.db.session(write=False) as session:
        key = session_key(session)
    hd = head(ctx)
    return make_checkpoint(key, hd["server_id"], 9, "ab" * 32, ctx.clock.now()).to_bytes()


def _other_hash(_cp: bytes, ctx: Any) -> bytes:
    with ctx.db.session(write=False) as session:
        key = session_key(session)
    hd = head(ctx)
    return make_checkpoint(key, hd["server_id"], 2, "ab" * 32, ctx.clock.now()).to_bytes()


#: bad checkpoints against an intact chain of 5: (forge, exception)
BAD_CHECKPOINTS: dict[str, tuple[Callable[[bytes, Any], bytes], type[Exception]]] = {
    "signature forged: seq raised": (_forge_field("seq", 4), SignatureError),
    "signature forged: hash replaced": (_forge_field("hash", "ab" * 32), SignatureError),
    "signature forged: time moved": (
        _forge_field("time", "2020-01-01T00:00:00.000000Z"),
        SignatureError,
    ),
    "signature bit flipped": (_flip_signature, SignatureError),
    "from another server, same key": (_other_server_same_key, TamperError),
    "from another server, its own key": (_other_server_other_key, SignatureError),
    "ahead of the chain": (_ahead, TamperError),
    "names another hash for an entry": (_other_hash, TamperError),
    "not JSON": (lambda _c, _x: b"\x00garbage", FormatError),
    "extra field": (_forge_field("note", "x"), FormatError),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_refused(app, case: str) -> None:
    ctx = app.state.ctx
    fill(ctx)
    forge, error = BAD_CHECKPOINTS[case]
    bad = forge(take_checkpoint(ctx), ctx)
    with pytest.raises(error):
        verify(ctx, bad)


def test_signer_audit_key_and_offline_checkpoint(make_app, tmp_path: Path) -> None:
    """A Signer key (file: URI, Ed25519): entries signed; the auditor needs only the
    public key to check a checkpoint."""
    key_path = tmp_path / "audit-signer.pem"
    private = generate_private_key("ed25519")
    write_private_key(key_path, private)
    app = make_app(audit_key=f"file:{key_path}")
    ctx = app.state.ctx
    fill(ctx)
    cp = take_checkpoint(ctx)
    assert verify(ctx, cp).entries == 5
    public = PublicAuditKey(Verifier.of(private.public_key()))
    assert verify_checkpoint(cp, public).seq == 5
    with pytest.raises(SignatureError):
        verify_checkpoint(cp, HmacAuditKey(os.urandom(32)))
    sql(ctx, "UPDATE audit_log SET mac = (SELECT mac FROM audit_log WHERE seq = 1) WHERE seq = 3")
    with pytest.raises(TamperError):
        verify(ctx)


def test_tpm_audit_key(make_app, tmp_path: Path) -> None:
    from bastion.tpm.software import SoftwareTpm
    from bastion.trust.keys import create_tpm_key

    state = tmp_path / "tpm.state"
    tpm = SoftwareTpm(state)
    try:
        create_tpm_key(tpm, "ecdsa-p256", tmp_path / "audit.tpmkey")
    finally:
        tpm.close()
    app = make_app(audit_key=f"tpm:software:{state}#{tmp_path / 'audit.tpmkey'}")
    ctx = app.state.ctx
    fill(ctx, 2)
    cp = take_checkpoint(ctx)
    assert verify(ctx, cp).entries == 2
    sql(ctx, "UPDATE audit_log SET actor = 'x' WHERE seq = 1")
    with pytest.raises(TamperError):
        verify(ctx)


def test_default_hmac_key_is_created_private(app) -> None:
    path = app.state.ctx.settings.data_dir / "audit.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_readable_hmac_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    create_hmac_key_file(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        open_audit_key(str(path), tmp_path, create=False)


def test_legacy_entries_are_sealed_once(app) -> None:
    """Rows from before MACs (0011 migration) are checked as a hash chain and adopted."""
    from bastion.server.app import create_app

    ctx = app.state.ctx
    fill(ctx, 3)
    sql(
        ctx, "UPDATE audit_log SET mac = NULL", "UPDATE audit_head SET server_id = NULL, mac = NULL"
    )
    app2 = create_app(ctx.settings, clock=ctx.clock)
    try:
        report = verify(app2.state.ctx)
        assert report.entries == 4
        assert rows(ctx)[-1]["event"] == "audit.seal"
    finally:
        app2.state.ctx.db.dispose()


def test_broken_legacy_chain_is_not_sealed(app) -> None:
    from bastion.server.app import create_app

    ctx = app.state.ctx
    fill(ctx, 3)
    sql(
        ctx,
        "UPDATE audit_log SET mac = NULL, details = '[1]' WHERE seq = 2",
        "UPDATE audit_head SET server_id = NULL, mac = NULL",
    )
    with pytest.raises(TamperError):
        create_app(ctx.settings, clock=ctx.clock)
    assert head(ctx)["server_id"] is None


def test_no_key_no_entry(app) -> None:
    ctx = app.state.ctx
    with ctx.db.session() as session:
        session.info.pop("bastion.audit_key")
        with pytest.raises(ConfigError):
            record(session, "test.event", "user:x", {})


def test_cli_checkpoint_verify_roundtrip(app, tmp_path: Path, db_url: str, capsys) -> None:
    ctx = app.state.ctx
    fill(ctx)
    data_dir = str(ctx.settings.data_dir)
    where = ["--data-dir", data_dir, "--database-url", db_url]
    out = tmp_path / "cp.json"
    assert main(["server", "audit", "checkpoint", *where, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["server", "audit", "verify", *where, "--checkpoint", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint_seq"] == 5
    key = str(Path(data_dir) / "audit.key")
    assert main(["server", "audit", "checkpoint-verify", str(out), "--key", key, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == 5
    other = tmp_path / "other.key"
    create_hmac_key_file(other)
    assert main(["server", "audit", "checkpoint-verify", str(out), "--key", str(other)]) != 0
    sql(ctx, "DELETE FROM audit_log WHERE seq = 5", "UPDATE audit_head SET seq = 4")
    assert main(["server", "audit", "verify", *where, "--checkpoint", str(out)]) != 0
    assert "audit" in capsys.readouterr().err


def test_cli_offline_verify_with_public_key(make_app, tmp_path: Path, capsys) -> None:
    key_path = tmp_path / "signer.pem"
    private = generate_private_key("ecdsa-p256")
    write_private_key(key_path, private)
    pub = tmp_path / "signer.pub.pem"
    pub.write_bytes(public_key_to_pem(private.public_key()))
    app = make_app(audit_key=str(key_path))
    fill(app.state.ctx, 2)
    cp = tmp_path / "cp.json"
    cp.write_bytes(take_checkpoint(app.state.ctx))
    assert main(["server", "audit", "checkpoint-verify", str(cp), "--key", str(pub)]) == 0
    assert "entry 2" in capsys.readouterr().out
