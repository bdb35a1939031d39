"""Alembic environment: runs on the connection :meth:`Database.upgrade` hands over.

Migrations are hand-written (no autogenerate at run time) and use batch mode on SQLite
so ALTER TABLE works there too. There is no alembic.ini: the script location is set by
:class:`bastion.server.db.engine.Database`.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when run by the alembic CLI
    raise RuntimeError("bastion migrations run through bastion.server.db.engine.Database")

context.configure(
    connection=connection,
    target_metadata=None,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
