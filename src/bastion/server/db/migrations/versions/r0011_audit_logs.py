"""Audit entry MACs and checkpoints; device log/event quotas (hardening: audit and logs).

* ``audit_log.mac``: MAC or signature of each entry by the audit key (NULL for entries
  written before this revision until the server seals them on its next start);
* ``audit_head.server_id`` and ``audit_head.mac``: the chain's id and the head's MAC;
* ``device_records.size``: UTF-8 bytes of the body (filled here for existing rows),
  plus indexes for the per-device quota, paging and the retention sweep.

Revision ID: 0011_audit_logs
Revises: 0010_accounts_hardening
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_audit_logs"
down_revision = "0010_accounts_hardening"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("mac", sa.Text, nullable=True))
    op.add_column("audit_head", sa.Column("server_id", sa.String(32), nullable=True))
    op.add_column("audit_head", sa.Column("mac", sa.Text, nullable=True))
    op.add_column(
        "device_records",
        sa.Column("size", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE device_records SET size = octet_length(body)")
    else:
        op.execute("UPDATE device_records SET size = length(CAST(body AS BLOB))")
    op.create_index(
        "ix_device_records_device_kind_id", "device_records", ["device_id", "kind", "id"]
    )
    op.create_index("ix_device_records_at", "device_records", ["at"])


def downgrade() -> None:
    op.drop_index("ix_device_records_at", table_name="device_records")
    op.drop_index("ix_device_records_device_kind_id", table_name="device_records")
    with op.batch_alter_table("device_records") as batch:
        batch.drop_column("size")
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("mac")
        batch.drop_column("server_id")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("mac")
