"""EK trust stores, EK deny-list, fleet EK policy (hardening: enrolment).

Revision ID: 0009_enrolment_hardening
Revises: 0008_devices
Owner: enrolment hardening (docs/adr/0010-enrolment-hardening.md).

* ``fleets.ek_policy``: certified (default, also for existing fleets) | allow-list | any;
* ``fleet_ek_cas``: a fleet's trusted TPM manufacturer CA certificates;
* ``ek_denylist``: EKs (sha256 of TPM2B_PUBLIC) refused at enrolment, kept after the
  device row is deleted;
* ``provisioning_keys.allow_devices``: [serial, EK hash] pairs;
* ``devices.ek_trust`` (and the challenge's): how the EK was trusted at enrolment.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_enrolment_hardening"
down_revision = "0008_devices"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=False)


def upgrade() -> None:
    with op.batch_alter_table("fleets") as batch:
        batch.add_column(
            sa.Column("ek_policy", sa.String(16), nullable=False, server_default="certified")
        )
    with op.batch_alter_table("provisioning_keys") as batch:
        batch.add_column(sa.Column("allow_devices", sa.Text, nullable=False, server_default="[]"))
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("ek_trust", sa.String(16), nullable=True))
    with op.batch_alter_table("enrollment_challenges") as batch:
        batch.add_column(sa.Column("ek_trust", sa.String(16), nullable=True))
    op.create_index("ix_devices_fleet_id_serial", "devices", ["fleet_id", "serial"])
    op.create_table(
        "fleet_ek_cas",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "fleet_id",
            sa.String(32),
            sa.ForeignKey("fleets.id", ondelete="CASCADE", name="fk_fleet_ek_cas_fleet_id_fleets"),
            nullable=False,
        ),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("not_after", TS, nullable=False),
        sa.Column("certificate", sa.Text, nullable=False),
        sa.Column("added_by", sa.String(128), nullable=False),
        sa.Column("added_at", TS, nullable=False),
        sa.UniqueConstraint("fleet_id", "sha256", name="uq_fleet_ek_cas_fleet_sha256"),
    )
    op.create_index("ix_fleet_ek_cas_fleet_id", "fleet_ek_cas", ["fleet_id"])
    op.create_table(
        "ek_denylist",
        sa.Column(
            "fleet_id",
            sa.String(32),
            sa.ForeignKey("fleets.id", ondelete="CASCADE", name="fk_ek_denylist_fleet_id_fleets"),
            primary_key=True,
        ),
        sa.Column("ek_hash", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("device_id", sa.String(32), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ek_denylist")
    op.drop_index("ix_fleet_ek_cas_fleet_id", table_name="fleet_ek_cas")
    op.drop_table("fleet_ek_cas")
    op.drop_index("ix_devices_fleet_id_serial", table_name="devices")
    with op.batch_alter_table("enrollment_challenges") as batch:
        batch.drop_column("ek_trust")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("ek_trust")
    with op.batch_alter_table("provisioning_keys") as batch:
        batch.drop_column("allow_devices")
    with op.batch_alter_table("fleets") as batch:
        batch.drop_column("ek_policy")
