"""Used one-time codes, invitations, encrypted TOTP secrets (hardening: accounts).

Revision ID: 0010_accounts_hardening
Revises: 0009_enrolment_hardening
"""

from __future__ import annotations

revision = "0010_accounts_hardening"
down_revision = "0009_enrolment_hardening"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""


def downgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""
