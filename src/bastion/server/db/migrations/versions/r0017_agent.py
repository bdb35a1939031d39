"""The device agent: request-signature nonces, presence, and the command queue.

Revision ID: 0017_agent
Revises: 0016_releases
Owner: the device agent (docs/adr/0032-device-request-signatures.md,
docs/adr/0033-command-channel.md).

* ``device_request_nonces``: nonces of verified request signatures (replay window);
* ``device_presence``: the agent's last heartbeat and whether its channel is open;
* ``device_commands``: commands queued for devices, their status and result.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_agent"
down_revision = "0016_releases"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=False)


def _fk(table: str) -> sa.ForeignKey:
    return sa.ForeignKey("devices.id", ondelete="CASCADE", name=f"fk_{table}_device_id_devices")


def upgrade() -> None:
    op.create_table(
        "device_request_nonces",
        sa.Column("device_id", sa.String(32), _fk("device_request_nonces"), primary_key=True),
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_device_request_nonces_expires_at", "device_request_nonces", ["expires_at"])
    op.create_table(
        "device_presence",
        sa.Column("device_id", sa.String(32), _fk("device_presence"), primary_key=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("agent_version", sa.String(64), nullable=True),
        sa.Column("os_version", sa.String(256), nullable=True),
        sa.Column("slot", sa.String(16), nullable=True),
        sa.Column("uptime_seconds", sa.Integer, nullable=True),
        sa.Column("log_backlog", sa.Integer, nullable=True),
        sa.Column("connected", sa.Boolean, nullable=False),
        sa.Column("connected_at", TS, nullable=True),
    )
    op.create_table(
        "device_commands",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("device_id", sa.String(32), _fk("device_commands"), nullable=False),
        sa.Column("fleet_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("output", sa.Text, nullable=True),
    )
    op.create_index("ix_device_commands_fleet_id", "device_commands", ["fleet_id"])
    op.create_index(
        "ix_device_commands_device_id_status", "device_commands", ["device_id", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_device_commands_device_id_status", table_name="device_commands")
    op.drop_index("ix_device_commands_fleet_id", table_name="device_commands")
    op.drop_table("device_commands")
    op.drop_table("device_presence")
    op.drop_index("ix_device_request_nonces_expires_at", table_name="device_request_nonces")
    op.drop_table("device_request_nonces")
