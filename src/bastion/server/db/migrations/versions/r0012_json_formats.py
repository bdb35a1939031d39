"""No schema change: the strict-JSON hardening needed none (kept so the chain stays linear).

Revision ID: 0012_json_formats
Revises: 0011_audit_logs
"""

from __future__ import annotations

revision = "0012_json_formats"
down_revision = "0011_audit_logs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""


def downgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""
