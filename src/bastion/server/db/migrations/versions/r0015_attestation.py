"""Attestation: nonces, verdict history, fleet attestation policy (device agent and attestation).

Revision ID: 0015_attestation
Revises: 0014_oidc
"""

from __future__ import annotations

revision = "0015_attestation"
down_revision = "0014_oidc"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""


def downgrade() -> None:
    """Nothing yet: filled by the change that owns this revision."""
