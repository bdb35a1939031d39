"""Release golden values in attestation; the server renews TUF by itself.

Revision ID: 0021_release_golden
Revises: 0020_pcr_default
Owner: releases and attestation (docs/adr/0037-release-golden-values.md).

Golden values of releases use the existing ``releases.golden_statement`` and
``golden_pcrs`` columns (now filled on publish). New here: ``tuf_renewal``, the lease
row that lets exactly one of several server processes re-sign the TUF snapshot and
timestamp in one pass (``server/releases/tuf_renewal.py``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_release_golden"
down_revision = "0020_pcr_default"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=False)


def upgrade() -> None:
    op.create_table(
        "tuf_renewal",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("lease_until", TS, nullable=False),
        sa.Column("renewed_at", TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("tuf_renewal")
