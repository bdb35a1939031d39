"""Account lifecycle: disabled users, password changes, session listing (operator console).

Revision ID: 0013_account_lifecycle
Revises: 0012_json_formats
"""

from __future__ import annotations

revision = "0013_account_lifecycle"
down_revision = "0012_json_formats"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""


def downgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""
