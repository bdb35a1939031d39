"""The server re-signs its TUF repository's online roles before they expire (ADR 0037).

One :class:`TufRenewer` per server process: a daemon thread the app's lifespan starts
when ``tuf_dir``, ``tuf_snapshot_key`` and ``tuf_timestamp_key`` are set and
``tuf_renew_seconds`` is above 0 (:meth:`TufRenewer.run_once` for tests and tools).
Each pass:

1. **claims the lease** row ``tuf_renewal`` with one conditional
   ``UPDATE ... SET lease_until = now + LEASE WHERE name = ? AND lease_until <= now``
   (the first pass ever inserts the row; a concurrent insert loses on the primary key),
   and commits: of several processes on one database exactly one claim succeeds, the
   others skip the pass. A holder that dies leaves a lease that runs out after
   :data:`LEASE`; SQLite and PostgreSQL behave the same (no advisory-lock dialect);
2. runs :func:`bastion.build.tuf_repo.renew` with the online signers: a new snapshot
   when a role changed or half its validity has passed, then a new timestamp likewise
   (files are written in crash-safe order: versioned file first, then the pointer);
3. releases the lease and, when something was signed, writes the audit entry
   ``tuf.renew`` (actor ``server:tuf``: new versions and expiry times) in the same
   transaction. A failed pass (a key root does not list, no repository yet) is logged,
   audited as ``tuf.renew_failed`` and retried at the next interval; the served
   metadata stays what it was.

The signers come from key URIs (``file:``, ``tpm:``): private key bytes never pass
through this module.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from bastion.build.tuf_repo import Renewal, TufRepository, renew
from bastion.errors import ConfigError
from bastion.io.clock import Clock
from bastion.server.audit.service import record
from bastion.server.db.engine import Database
from bastion.server.releases.models import TufRenewal
from bastion.server.settings import ServerSettings
from bastion.trust.signer import Signer

log = logging.getLogger(__name__)

ACTOR = "server:tuf"
LEASE_NAME = "tuf"
#: how long a claimed pass may take before another process may claim it
LEASE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class PassOutcome:
    """What one pass did: ``claimed`` False when another process held the lease."""

    claimed: bool
    snapshot: Renewal | None = None
    timestamp: Renewal | None = None
    error: str | None = None

    @property
    def renewed(self) -> bool:
        return bool(
            (self.snapshot and self.snapshot.renewed) or (self.timestamp and self.timestamp.renewed)
        )


class TufRenewer:
    """Renews one TUF repository folder with the server's online keys."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        repo_dir: Path,
        *,
        snapshot: Signer,
        timestamp: Signer,
        interval_seconds: float,
        holder: str | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._repo = TufRepository(repo_dir)
        self._snapshot = snapshot
        self._timestamp = timestamp
        self.interval_seconds = interval_seconds
        self.holder = (holder or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}")[:128]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Run a pass now and then every ``interval_seconds`` until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tuf-renew", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a database hiccup must not stop renewal for good
                log.warning("tuf: renewal pass failed: %s", exc)
            self._stop.wait(self.interval_seconds)

    # --- one pass --------------------------------------------------------------------------

    def _claim(self, now: dt.datetime) -> bool:
        with self._db.session() as session:
            if session.get(TufRenewal, LEASE_NAME) is None:
                session.add(
                    TufRenewal(name=LEASE_NAME, holder=self.holder, lease_until=now + LEASE)
                )
                try:
                    session.commit()
                except IntegrityError:  # another process inserted it first: its pass
                    session.rollback()
                    return False
                return True
            result = session.execute(
                update(TufRenewal)
                .where(TufRenewal.name == LEASE_NAME, TufRenewal.lease_until <= now)
                .values(holder=self.holder, lease_until=now + LEASE)
            )
            session.commit()
            return bool(getattr(result, "rowcount", 0) == 1)

    def _release(self, now: dt.datetime, outcome: PassOutcome) -> None:
        with self._db.session() as session:
            values: dict[str, object] = {"lease_until": now}
            if outcome.renewed:
                values["renewed_at"] = now
                details = {"repository": str(self._repo.path)}
                for renewal in (outcome.snapshot, outcome.timestamp):
                    if renewal is not None:
                        details[renewal.role] = str(renewal.version)
                        details[f"{renewal.role}_expires"] = renewal.expires.isoformat()
                        details[f"{renewal.role}_renewed"] = str(renewal.renewed).lower()
                record(session, "tuf.renew", ACTOR, details, at=now)
            elif outcome.error is not None:
                details = {"repository": str(self._repo.path), "error": outcome.error}
                record(session, "tuf.renew_failed", ACTOR, details, at=now)
            session.execute(
                update(TufRenewal)
                .where(TufRenewal.name == LEASE_NAME, TufRenewal.holder == self.holder)
                .values(**values)
            )
            session.commit()

    def run_once(self) -> PassOutcome:
        """One pass (module docstring); never raises for a failed renewal."""
        now = self._clock.now()
        if not self._claim(now):
            return PassOutcome(False)
        try:
            snap, ts = renew(self._repo, self._snapshot, self._timestamp, now)
            outcome = PassOutcome(True, snap, ts)
        except Exception as exc:  # reported, retried next pass; the lease is released
            log.warning("tuf: cannot renew %s: %s", self._repo.path, exc)
            outcome = PassOutcome(True, error=str(exc)[:500])
        self._release(now, outcome)
        return outcome


def renewer_for(db: Database, clock: Clock, settings: ServerSettings) -> TufRenewer | None:
    """The renewer the settings ask for (None: no TUF folder, no online keys, or an
    interval of 0); ConfigError when only one online key is given."""
    from bastion.trust.keys import open_signer

    keys = (settings.tuf_snapshot_key, settings.tuf_timestamp_key)
    if any(keys) and not all(keys):
        raise ConfigError("tuf_snapshot_key and tuf_timestamp_key go together: give both")
    if settings.tuf_dir is None or not all(keys) or settings.tuf_renew_seconds <= 0:
        return None
    assert settings.tuf_snapshot_key is not None and settings.tuf_timestamp_key is not None
    return TufRenewer(
        db,
        clock,
        settings.tuf_dir,
        snapshot=open_signer(settings.tuf_snapshot_key),
        timestamp=open_signer(settings.tuf_timestamp_key),
        interval_seconds=settings.tuf_renew_seconds,
    )
