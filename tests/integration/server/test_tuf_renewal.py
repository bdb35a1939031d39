"""The server renews its TUF snapshot and timestamp by itself (ADR 0037), on SQLite and
PostgreSQL, with a fake clock.

Covered: nothing is signed while the metadata is fresh; past half its validity the
timestamp (and, later, the snapshot) is re-signed, audited and served; of several
renewers on one database exactly one renews per pass (the lease row); a key the root
does not list fails the pass (audited, nothing served changes, the lease is freed);
one online key without the other is a configuration error; the app's lifespan runs the
renewer thread.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.tufkit import Keys, make_repo

from bastion.build.tuf_repo import TufRepository
from bastion.errors import ConfigError
from bastion.io.clock import FixedClock
from bastion.server.audit.models import AuditEntry
from bastion.server.releases.tuf_renewal import PassOutcome, TufRenewer, renewer_for
from bastion.server.settings import ServerSettings
from bastion.trust.keys import write_private_key
from bastion.trust.signer import SoftwareSigner

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration
HOUR = 3600


def _keys(folder: Path) -> tuple[Keys, str, str]:
    """Role keys whose online keys are also PEM files (the server opens them by URI)."""
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    signers = []
    for name in ("snapshot", "timestamp"):
        key = ed25519.Ed25519PrivateKey.generate()
        write_private_key(folder / f"{name}.pem", key)
        uris.append(f"file:{folder / f'{name}.pem'}")
        signers.append(SoftwareSigner(key))
    return Keys(snapshot=signers[0], timestamp=signers[1]), uris[0], uris[1]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetWorld]:
    folder = tmp_path_factory.mktemp("tuf-renew")
    (folder / "tuf").mkdir()
    with shared_world(request.param, folder, tuf_dir=folder / "tuf") as w:
        yield w


def _fresh_repo(world: FleetWorld) -> tuple[TufRepository, Keys]:
    """A new repository in the served folder, made at the world's current time."""
    folder: Path = world.ctx.settings.tuf_dir
    for old in folder.iterdir():
        import shutil

        shutil.rmtree(old)
    keys, _, _ = _keys(folder.parent / f"keys-{time.monotonic_ns()}")
    repo = make_repo(folder / "repo", keys, now=world.ctx.clock.now())
    return repo, keys


def _renewer(world: FleetWorld, repo: TufRepository, keys: Keys, holder: str) -> TufRenewer:
    return TufRenewer(
        world.ctx.db,
        world.ctx.clock,
        repo.path,
        snapshot=keys.snapshot,
        timestamp=keys.timestamp,
        interval_seconds=60,
        holder=holder,
    )


def _served(world: FleetWorld, role: str) -> dict[str, object]:
    got = world.client.get(f"/tuf/repo/metadata/{role}.json")
    assert got.status_code == 200, got.text
    signed: dict[str, object] = json.loads(got.content)["signed"]
    return signed


def _audit(world: FleetWorld, event: str) -> list[dict[str, str]]:
    with world.ctx.db.session(write=False) as session:
        rows = session.execute(
            select(AuditEntry.details).where(AuditEntry.event == event).order_by(AuditEntry.seq)
        ).scalars()
        return [json.loads(r) for r in rows]


def test_renews_before_expiry_and_audits(world: FleetWorld) -> None:
    repo, keys = _fresh_repo(world)
    renewer = _renewer(world, repo, keys, "one")
    clock: FixedClock = world.ctx.clock
    before = len(_audit(world, "tuf.renew"))
    # fresh: nothing to sign
    first = renewer.run_once()
    assert first.claimed and not first.renewed and first.error is None
    assert len(_audit(world, "tuf.renew")) == before
    ts1 = _served(world, "timestamp")
    # 13 h later the one-day timestamp is past half its validity: re-signed, served, audited
    clock.advance(13 * HOUR)
    second = renewer.run_once()
    assert second.timestamp is not None and second.timestamp.renewed
    assert second.snapshot is not None and not second.snapshot.renewed
    ts2 = _served(world, "timestamp")
    assert ts2["version"] == int(str(ts1["version"])) + 1
    expires = dt.datetime.fromisoformat(str(ts2["expires"]).replace("Z", "+00:00"))
    assert expires == clock.now() + dt.timedelta(days=1)
    audited = _audit(world, "tuf.renew")[-1]
    assert audited["timestamp"] == str(ts2["version"]) and audited["timestamp_renewed"] == "true"
    assert audited["snapshot_renewed"] == "false"
    # four days on, the seven-day snapshot is due too: both are re-signed
    clock.advance(4 * 24 * HOUR)
    third = renewer.run_once()
    assert third.snapshot is not None and third.snapshot.renewed
    assert third.timestamp is not None and third.timestamp.renewed
    meta = _served(world, "timestamp")["meta"]
    assert meta["snapshot.json"]["version"] == third.snapshot.version  # type: ignore[index]


def test_one_of_several_workers_renews(world: FleetWorld) -> None:
    repo, keys = _fresh_repo(world)
    a, b = _renewer(world, repo, keys, "a"), _renewer(world, repo, keys, "b")
    clock: FixedClock = world.ctx.clock
    # a holds the lease (mid-pass): b skips
    now = clock.now()
    assert a._claim(now)
    assert not b.run_once().claimed
    clock.advance(60)
    assert not b.run_once().claimed  # the lease still runs (five minutes)
    clock.advance(13 * HOUR)
    taken = b.run_once()  # a died: its lease ran out
    assert taken.claimed and taken.renewed
    # both run every pass at the same time: one timestamp version per due pass
    for _ in range(4):
        clock.advance(13 * HOUR)
        version = int(str(_served(world, "timestamp")["version"]))
        results: list[PassOutcome] = []

        def run(renewer: TufRenewer, out: list[PassOutcome] = results) -> None:
            out.append(renewer.run_once())

        threads = [threading.Thread(target=run, args=(r,)) for r in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        renewed = [r for r in results if r.renewed]
        assert len(renewed) == 1, results
        assert int(str(_served(world, "timestamp")["version"])) == version + 1


def test_a_key_the_root_does_not_list_fails_audited(world: FleetWorld) -> None:
    repo, keys = _fresh_repo(world)
    stranger = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
    bad = TufRenewer(
        world.ctx.db,
        world.ctx.clock,
        repo.path,
        snapshot=keys.snapshot,
        timestamp=stranger,
        interval_seconds=60,
        holder="bad",
    )
    world.ctx.clock.advance(13 * HOUR)
    served = _served(world, "timestamp")
    outcome = bad.run_once()
    assert outcome.claimed and not outcome.renewed and outcome.error
    assert _served(world, "timestamp") == served
    failed = _audit(world, "tuf.renew_failed")[-1]
    assert "timestamp" in failed["error"]
    # the lease was freed: a good renewer renews right away
    assert _renewer(world, repo, keys, "good").run_once().renewed


def test_online_keys_go_together(tmp_path: Path, world: FleetWorld) -> None:
    _, snap, ts = _keys(tmp_path)
    base = {"data_dir": tmp_path / "d", "tuf_dir": tmp_path}
    with pytest.raises(ConfigError, match="go together"):
        renewer_for(world.ctx.db, world.ctx.clock, ServerSettings(**base, tuf_snapshot_key=snap))  # type: ignore[arg-type]
    both = {"tuf_snapshot_key": snap, "tuf_timestamp_key": ts}
    off = ServerSettings(**base, **both, tuf_renew_seconds=0)  # type: ignore[arg-type]
    assert renewer_for(world.ctx.db, world.ctx.clock, off) is None
    no_dir = ServerSettings(data_dir=tmp_path / "d", **both)  # type: ignore[arg-type]
    assert renewer_for(world.ctx.db, world.ctx.clock, no_dir) is None
    on = renewer_for(world.ctx.db, world.ctx.clock, ServerSettings(**base, **both))  # type: ignore[arg-type]
    assert on is not None and on.interval_seconds == 3600


def test_the_app_lifespan_runs_the_renewer(tmp_path: Path) -> None:
    from bastion.server.app import create_app

    from .conftest import CHEAP

    keys, snap, ts = _keys(tmp_path / "keys")
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    make_repo(tmp_path / "tuf" / "repo", keys, now=start - dt.timedelta(hours=13))
    settings = ServerSettings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'bastion.db'}",
        tuf_dir=tmp_path / "tuf",
        tuf_snapshot_key=snap,
        tuf_timestamp_key=ts,
        tuf_renew_seconds=0.2,
        **CHEAP,
    )
    app = create_app(settings, clock=FixedClock(start))
    try:
        with TestClient(app) as client:
            deadline = time.monotonic() + 30
            version = 0
            while time.monotonic() < deadline:
                got = client.get("/tuf/repo/metadata/timestamp.json")
                version = json.loads(got.content)["signed"]["version"]
                if version >= 2:
                    break
                time.sleep(0.1)
            assert version == 2
    finally:
        app.state.ctx.db.dispose()
