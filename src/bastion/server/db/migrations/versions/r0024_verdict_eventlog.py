"""A verdict keeps the TCG event log it judged (the device page decodes it).

Revision ID: 0024_verdict_eventlog
Revises: 0020_pcr_default (the lead re-chains branch migrations at merge)
Owner: console (docs/adr/0035-web-dashboard.md, amendment of 2026-12-06).

``attestation_verdicts.eventlog``: the raw event log of the evidence, at most
``ATTEST_EVENTLOG_MAX_SIZE`` bytes (the evidence parser refuses more). Only a device's
newest verdict keeps it: storing a new verdict clears the log of the device's older
ones in the same transaction, so the column holds at most one log per device. Rows
written before this revision, and older verdicts, have NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024_verdict_eventlog"
down_revision = "0021_release_golden"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attestation_verdicts") as batch:
        batch.add_column(sa.Column("eventlog", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attestation_verdicts") as batch:
        batch.drop_column("eventlog")
