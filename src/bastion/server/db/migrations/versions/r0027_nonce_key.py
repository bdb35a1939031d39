"""The request-nonce table's key leads with the nonce: ``(nonce, device_id)``.

Revision ID: 0027_nonce_key
Revises: 0026_answer_triggers
Owner: the device agent (docs/adr/0050-time-ordered-request-nonces.md).

The agent's nonces begin with the time they were made (ADR 0050), so a key that leads
with the nonce is written at its end. The old key, ``(device_id, nonce)``, was written
at a random place across the whole table: at 40,000 signed devices that cost 6,000 to
11,500 full-page images of WAL a minute, against 384 with this key. Lookups name both
columns, so they still take the key; the sweep has its own ``expires_at`` index. A
device's deletion now finds its nonces by scanning the table (its rows live at most
``NONCE_KEEP``), the price of not keeping a second index on every insert.

PostgreSQL swaps the key in one ``ALTER TABLE``; SQLite copies the table (batch mode).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027_nonce_key"
down_revision = "0026_answer_triggers"
branch_labels = None
depends_on = None

TABLE = "device_request_nonces"
NEW = ("nonce", "device_id")
OLD = ("device_id", "nonce")


def _rekey(columns: tuple[str, ...]) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        name = sa.inspect(bind).get_pk_constraint(TABLE)["name"]
        op.execute(
            f'ALTER TABLE {TABLE} DROP CONSTRAINT "{name}", '
            f'ADD CONSTRAINT "{name}" PRIMARY KEY ({", ".join(columns)})'
        )
        return
    table = sa.Table(
        TABLE,
        sa.MetaData(),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=False), nullable=False),
        sa.PrimaryKeyConstraint(*columns),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            ondelete="CASCADE",
            name=f"fk_{TABLE}_device_id_devices",
        ),
        sa.Index(f"ix_{TABLE}_expires_at", "expires_at"),
    )
    with op.batch_alter_table(TABLE, copy_from=table, recreate="always"):
        pass


def upgrade() -> None:
    _rekey(NEW)


def downgrade() -> None:
    _rekey(OLD)
