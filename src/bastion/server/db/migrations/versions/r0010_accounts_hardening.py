"""Used one-time codes, invitations, encrypted TOTP secrets (hardening: accounts).

Revision ID: 0010_accounts_hardening
Revises: 0009_enrolment_hardening
Owner: accounts hardening (docs/adr/0011-accounts-hardening.md).

* ``used_totp_steps``: one row per TOTP step a user spent; the primary key makes a step
  single-use even for logins running at the same time.
* ``org_invitations``: membership needs the invitee's consent.
* ``users.totp_secret`` becomes TEXT and every plaintext seed is sealed with the
  server's secret key (``config.attributes["secret_box"]``, see
  :mod:`bastion.server.secretbox`). Without a key the upgrade refuses to run while a
  plaintext seed exists; the downgrade opens them again.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from bastion.errors import ConfigError

revision = "0010_accounts_hardening"
down_revision = "0009_enrolment_hardening"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=False)
_USERS = sa.table("users", sa.column("id", sa.String), sa.column("totp_secret", sa.Text))


def _box(why: str) -> Any:
    loader = op.get_context().config.attributes.get("secret_box")  # type: ignore[union-attr]
    if loader is None:
        raise ConfigError(
            f"the database holds {why} and no server secret key was given: start the "
            "server (or run 'bastion server init') with its key to migrate"
        )
    return loader()


def upgrade() -> None:
    op.create_table(
        "used_totp_steps",
        sa.Column(
            "user_id",
            sa.String(32),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_used_totp_steps_user_id_users"),
            nullable=False,
        ),
        sa.Column("step", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("used_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "step", name="pk_used_totp_steps"),
    )
    op.create_table(
        "org_invitations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "org_id",
            sa.String(32),
            sa.ForeignKey(
                "organisations.id",
                ondelete="CASCADE",
                name="fk_org_invitations_org_id_organisations",
            ),
            nullable=False,
        ),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("invited_by", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("answered_at", TS, nullable=True),
    )
    op.create_index("ix_org_invitations_org_id", "org_invitations", ["org_id"])
    op.create_index("ix_org_invitations_email", "org_invitations", ["email"])
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":  # SQLite does not enforce VARCHAR lengths
        op.alter_column(
            "users", "totp_secret", type_=sa.Text, existing_type=sa.String(64), nullable=True
        )
    from bastion.server.secretbox import is_sealed

    rows = bind.execute(
        sa.select(_USERS.c.id, _USERS.c.totp_secret).where(_USERS.c.totp_secret.is_not(None))
    ).all()
    plain = [(user_id, secret) for user_id, secret in rows if not is_sealed(secret)]
    if plain:
        box = _box("plaintext TOTP secrets to seal")
        for user_id, secret in plain:
            bind.execute(
                sa.update(_USERS)
                .where(_USERS.c.id == user_id)
                .values(totp_secret=box.seal(secret, f"totp:{user_id}"))
            )


def downgrade() -> None:
    from bastion.server.secretbox import is_sealed

    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_USERS.c.id, _USERS.c.totp_secret).where(_USERS.c.totp_secret.is_not(None))
    ).all()
    sealed = [(user_id, secret) for user_id, secret in rows if is_sealed(secret)]
    if sealed:
        box = _box("sealed TOTP secrets to open")
        for user_id, secret in sealed:
            bind.execute(
                sa.update(_USERS)
                .where(_USERS.c.id == user_id)
                .values(totp_secret=box.open(secret, f"totp:{user_id}"))
            )
    if bind.dialect.name != "sqlite":
        op.alter_column(
            "users", "totp_secret", type_=sa.String(64), existing_type=sa.Text, nullable=True
        )
    op.drop_index("ix_org_invitations_email", "org_invitations")
    op.drop_index("ix_org_invitations_org_id", "org_invitations")
    op.drop_table("org_invitations")
    op.drop_table("used_totp_steps")
