"""One engine and session factory per app, and the Alembic upgrade run on start.

:class:`Database` is created by :func:`bastion.server.app.create_app` from the settings
and kept in the app context; there is no module-level engine. ``Database.session()``
opens a session for a route or a CLI command:

* ``write=True`` (the default): on SQLite the transaction starts with
  ``BEGIN IMMEDIATE`` so concurrent writers queue on the database lock (``busy_timeout``)
  instead of failing with a stale snapshot; on PostgreSQL a normal transaction.
* ``write=False``: a plain deferred transaction for routes that only read.

Services own the transaction: they call ``session.commit()`` when their unit of work is
complete; anything not committed is rolled back when the session closes.

:meth:`Database.upgrade` applies every Alembic migration up to all heads
(``upgrade heads``). Feature revisions may branch from ``0001_core`` so engineers can
add tables in parallel without renumbering; Alembic applies every branch.
A revision that must rewrite stored secrets reads the server's
:class:`~bastion.server.secretbox.SecretBox` from ``config.attributes["secret_box"]``
(a callable, so the key is only loaded when a revision needs it).

Files: a SQLite database file is created mode 0600 (and an existing one, with its
``-wal``/``-shm`` companions, is tightened to 0600) before the first connection;
:func:`ensure_private_dir` makes the data folder 0700.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bastion.errors import BackendError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_WRITE_OPTION = "bastion_write"


class Database:
    """An engine, its session factories and the migration runner for one app."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        pool_size: int = 10,
        max_overflow: int = 20,
        pool_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        #: connections the pool hands out at most (requests are admitted to fit it)
        self.capacity = pool_size + max_overflow
        if ":memory:" not in url and url not in ("sqlite://", "sqlite+pysqlite://"):
            # an in-memory SQLite database has one connection and no pool to size
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = max_overflow
            kwargs["pool_timeout"] = pool_timeout
        if self.is_sqlite:
            _private_sqlite_file(url)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise BackendError(f"database URL {redact(url)!r} is not usable: {exc}") from exc
        if self.is_sqlite:
            _sqlite_pragmas(self.engine)
        self._write = sessionmaker(
            bind=self.engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )
        self._read = sessionmaker(bind=self.engine, expire_on_commit=False)
        # PostgreSQL: reads without BEGIN/ROLLBACK round trips (each statement has its own
        # snapshot in READ COMMITTED either way); SQLite keeps its deferred transaction
        self._read_autocommit = (
            self._read
            if self.is_sqlite
            else sessionmaker(
                bind=self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
            )
        )

    def set_session_info(self, name: str, value: object) -> None:
        """Put ``value`` into ``session.info[name]`` of every session opened from now on
        (per-app objects that service code reaches through its session: the audit key)."""
        for factory in {self._write, self._read, self._read_autocommit}:
            info = dict(factory.kw.get("info") or {})
            info[name] = value
            factory.configure(info=info)

    def listen_sessions(self, name: str, fn: Callable[..., Any]) -> None:
        """Register ``fn`` for the Session event ``name`` on every session this database
        opens (the device answer cache's record of this process's writes)."""
        for factory in {self._write, self._read, self._read_autocommit}:
            event.listen(factory, name, fn)

    @contextmanager
    def session(self, *, write: bool = True, autocommit: bool = False) -> Iterator[Session]:
        """A session; uncommitted work is rolled back on exit. ``autocommit`` (read
        sessions only, PostgreSQL; ignored on SQLite): no transaction around the
        statements, for a request's few independent reads (the device heartbeat)."""
        if write and autocommit:
            raise ValueError("a write session cannot be in autocommit")
        factory = self._write if write else self._read_autocommit if autocommit else self._read
        with factory() as session:
            try:
                yield session
            finally:
                session.rollback()

    def upgrade(self, secret_box: Callable[[], Any] | None = None) -> None:
        """Apply all migrations (to every head) from whatever state the database is in.

        ``secret_box`` returns the server's SecretBox, for revisions that seal secrets.
        """
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["secret_box"] = secret_box
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "heads")
        except SQLAlchemyError as exc:
            raise BackendError(f"database migration failed on {redact(self.url)!r}: {exc}") from exc

    def table_names(self) -> list[str]:
        """Names of the tables present (for tests and diagnostics)."""
        return sorted(inspect(self.engine).get_table_names())

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def ensure_private_dir(folder: Path) -> None:
    """Create ``folder`` mode 0700, or take group and other access away from it."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode & 0o077:
        folder.chmod(mode & 0o700)


def _private_sqlite_file(url: str) -> None:
    """Create the SQLite file 0600 before SQLite does (it would follow the umask)."""
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # a malformed URL fails in create_engine with a clear message
        return
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.is_dir():
        return  # SQLite reports the missing folder itself
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if name.exists() and stat.S_IMODE(name.stat().st_mode) & 0o077:
            name.chmod(0o600)


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE for write sessions (pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy emit BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL is shown as its scheme only
        return url.split(":", 1)[0] + ":..."
