"""OpenID Connect providers and linked identities (operator console).

Revision ID: 0014_oidc
Revises: 0013_account_lifecycle
Owner: OIDC sign-in (docs/adr/0021-oidc-sign-in.md).

* ``oidc_identities``: a provider subject (issuer + sub) linked to a user.
* ``oidc_logins``: started sign-ins (state hash, nonce, PKCE verifier, browser binding,
  second-factor ticket), each step single-use.
* ``organisations.require_oidc``: members may act in the organisation only with a
  session (or a token minted by one) that signed in through OIDC.
* ``user_tokens.auth_method``: ``password`` or ``oidc``, how the session's login was made.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_oidc"
down_revision = "0013_account_lifecycle"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=False)


def upgrade() -> None:
    op.create_table(
        "oidc_identities",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "user_id",
            sa.String(32),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_oidc_identities_user_id_users"),
            nullable=False,
        ),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_login_at", TS, nullable=True),
        sa.UniqueConstraint("issuer", "subject", name="uq_oidc_identities_issuer_subject"),
        sa.UniqueConstraint("user_id", "issuer", name="uq_oidc_identities_user_id_issuer"),
    )
    op.create_index("ix_oidc_identities_user_id", "oidc_identities", ["user_id"])
    op.create_table(
        "oidc_logins",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("state_hash", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("code_verifier", sa.Text, nullable=False),
        sa.Column("browser_hash", sa.String(64), nullable=False),
        sa.Column("redirect_uri", sa.String(512), nullable=False),
        sa.Column("client", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.Column(
            "user_id",
            sa.String(32),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_oidc_logins_user_id_users"),
            nullable=True,
        ),
        sa.Column("ticket_hash", sa.String(64), nullable=True),
        sa.Column("ticket_expires_at", TS, nullable=True),
        sa.Column("ticket_used_at", TS, nullable=True),
        sa.UniqueConstraint("state_hash", name="uq_oidc_logins_state_hash"),
        sa.UniqueConstraint("ticket_hash", name="uq_oidc_logins_ticket_hash"),
    )
    # Plain ADD/DROP COLUMN (SQLite has both since 3.35), never a batch "move and copy":
    # recreating organisations drops the old table, and with foreign keys on SQLite
    # cascades the drop to every fleet and device.
    op.add_column(
        "organisations",
        sa.Column("require_oidc", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "user_tokens",
        sa.Column("auth_method", sa.String(16), nullable=False, server_default="password"),
    )


def downgrade() -> None:
    op.drop_column("user_tokens", "auth_method")
    op.drop_column("organisations", "require_oidc")
    op.drop_table("oidc_logins")
    op.drop_index("ix_oidc_identities_user_id", "oidc_identities")
    op.drop_table("oidc_identities")
