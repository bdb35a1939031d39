"""Audit entry MACs and checkpoints; device log/event quotas (hardening: audit and logs).

Revision ID: 0011_audit_logs
Revises: 0010_accounts_hardening
"""

from __future__ import annotations

revision = "0011_audit_logs"
down_revision = "0010_accounts_hardening"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""


def downgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""
