"""OpenID Connect providers and linked identities (operator console).

Revision ID: 0014_oidc
Revises: 0013_account_lifecycle
"""

from __future__ import annotations

revision = "0014_oidc"
down_revision = "0013_account_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""


def downgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""
