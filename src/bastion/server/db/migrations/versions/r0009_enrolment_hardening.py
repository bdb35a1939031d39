"""EK trust stores, EK deny-list, fleet EK policy (hardening: enrolment).

Revision ID: 0009_enrolment_hardening
Revises: 0008_devices
"""

from __future__ import annotations

revision = "0009_enrolment_hardening"
down_revision = "0008_devices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""


def downgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""
