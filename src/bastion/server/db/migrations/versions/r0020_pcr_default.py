"""The default attestation PCR selection follows the EFI boot chain.

Revision ID: 0020_pcr_default
Revises: 0018_scale (the lead re-chains branch migrations at merge)
Owner: attestation (docs/attestation.md, docs/adr/0027-sim-runs-the-real-artifacts.md).

The container boot chain, whose PCRs were ``sha256:0,4,7,11,15``, is gone: no image a
build makes now has golden values for PCR 15, and the EFI chain's PCR 9 (the stub's
command line and initrd) went unquoted. A fleet row created while that was the default
carries it as a value; such rows move to the new default ``sha256:0,4,7,9,11``. A
selection an operator chose otherwise is kept as it is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_pcr_default"
down_revision = "0018_scale"
branch_labels = None
depends_on = None

OLD = "sha256:0,4,7,11,15"
NEW = "sha256:0,4,7,9,11"


def _move(src: str, dest: str) -> None:
    table = sa.table("fleet_attestation", sa.column("pcr_selection", sa.String(64)))
    op.execute(table.update().where(table.c.pcr_selection == src).values(pcr_selection=dest))


def upgrade() -> None:
    _move(OLD, NEW)


def downgrade() -> None:
    _move(NEW, OLD)
