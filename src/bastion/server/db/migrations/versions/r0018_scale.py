"""Several server processes and webhooks: shared counters, webhook endpoints, deliveries.

Revision ID: 0018_scale
Revises: 0017_agent
Owner: scale and webhooks (docs/adr/0034-scale-and-webhooks.md).

* ``shared_counters``: token buckets and login-failure counts shared by every server
  process on one database (``server/auth/ratelimit.py``);
* ``webhooks``: a fleet's webhook endpoints (URL, sealed signing secret, events);
* ``webhook_deliveries``: the outbox and delivery log (one row per event and endpoint).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_scale"
down_revision = "0017_agent"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=False)


def upgrade() -> None:
    op.create_table(
        "shared_counters",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_shared_counters_expires_at", "shared_counters", ["expires_at"])
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "fleet_id",
            sa.String(32),
            sa.ForeignKey("fleets.id", ondelete="CASCADE", name="fk_webhooks_fleet_id_fleets"),
            nullable=False,
        ),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("events", sa.String(512), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_webhooks_fleet_id", "webhooks", ["fleet_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "webhook_id",
            sa.String(32),
            sa.ForeignKey(
                "webhooks.id", ondelete="CASCADE", name="fk_webhook_deliveries_webhook_id_webhooks"
            ),
            nullable=False,
        ),
        sa.Column("fleet_id", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("last_attempt_at", TS, nullable=True),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_webhook_deliveries_webhook_id", "webhook_deliveries", ["webhook_id"])
    op.create_index("ix_webhook_deliveries_fleet_id", "webhook_deliveries", ["fleet_id"])
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_fleet_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_webhook_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhooks_fleet_id", table_name="webhooks")
    op.drop_table("webhooks")
    op.drop_index("ix_shared_counters_expires_at", table_name="shared_counters")
    op.drop_table("shared_counters")
