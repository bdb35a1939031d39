"""A device's newest verdict is one index lookup: ``attestation_verdicts (device_id, id)``.

Revision ID: 0025_verdict_latest_index
Revises: 0024_verdict_eventlog
Owner: api (docs/adr/0043-device-hot-path.md, amendment "Third round").

Every gated device request reads the device's newest verdict (``max(id)`` of its rows).
With only ``device_id`` indexed, the database visits every verdict the device ever had
(the history is kept), or walks the primary key backwards past other devices' rows; the
gate's statement grew with the fleet's history (2,000 devices with 50 verdicts each:
0.39 ms of PostgreSQL execution against 0.21 ms with this index). The composite index
answers it from the index's end, and serves every lookup by ``device_id`` alone, so the
single-column index goes.
"""

from __future__ import annotations

from alembic import op

revision = "0025_verdict_latest_index"
down_revision = "0024_verdict_eventlog"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_attestation_verdicts_device_latest", "attestation_verdicts", ["device_id", "id"]
    )
    op.drop_index("ix_attestation_verdicts_device_id", table_name="attestation_verdicts")


def downgrade() -> None:
    op.create_index("ix_attestation_verdicts_device_id", "attestation_verdicts", ["device_id"])
    op.drop_index("ix_attestation_verdicts_device_latest", table_name="attestation_verdicts")
