"""Account lifecycle: when a session last proved password and second factor.

Revision ID: 0013_account_lifecycle
Revises: 0012_json_formats
Owner: operator's console (docs/adr/0020-account-lifecycle-and-metrics.md).

* ``user_tokens.authenticated_at``: the time the session's holder last gave the
  password (and the second factor where enrolled), at login or by re-authentication.
  Security-relevant changes need it within ``limits.REAUTH_MAX_AGE_SECONDS``. Existing
  sessions keep NULL, which is never fresh: their holders re-authenticate once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_account_lifecycle"
down_revision = "0012_json_formats"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("user_tokens") as batch:
        batch.add_column(sa.Column("authenticated_at", sa.DateTime(timezone=False), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user_tokens") as batch:
        batch.drop_column("authenticated_at")
