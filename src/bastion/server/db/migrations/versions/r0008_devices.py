"""Provisioning keys, enrolment challenges, devices, env overrides, records, revoked certs.

Revision ID: 0008_devices
Revises: 0001_core
Owner: serverdev (docs/adr/0008-provisioning.md).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_devices"
down_revision = "0001_core"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=False)


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKey:
    return sa.ForeignKey(f"{target}.id", ondelete=ondelete, name=f"fk_{table}_{column}_{target}")


def upgrade() -> None:
    op.create_table(
        "provisioning_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "fleet_id",
            sa.String(32),
            _fk("provisioning_keys", "fleet_id", "fleets", "CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("display_prefix", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("max_uses", sa.Integer, nullable=False),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.Column("rate_per_minute", sa.Integer, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("allow_serials", sa.Text, nullable=False),
        sa.Column("allow_ek_hashes", sa.Text, nullable=False),
        sa.UniqueConstraint("token_hash", name="uq_provisioning_keys_token_hash"),
    )
    op.create_index("ix_provisioning_keys_fleet_id", "provisioning_keys", ["fleet_id"])
    op.create_table(
        "enrollment_challenges",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "provisioning_key_id",
            sa.String(32),
            _fk("enrollment_challenges", "provisioning_key_id", "provisioning_keys", "CASCADE"),
            nullable=False,
        ),
        sa.Column("fleet_id", sa.String(32), nullable=False),
        sa.Column("serial", sa.String(128), nullable=False),
        sa.Column("ek_hash", sa.String(64), nullable=False),
        sa.Column("key_public", sa.LargeBinary, nullable=False),
        sa.Column("csr_pem", sa.Text, nullable=False),
        sa.Column("secret", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index(
        "ix_enrollment_challenges_provisioning_key_id",
        "enrollment_challenges",
        ["provisioning_key_id"],
    )
    op.create_index("ix_enrollment_challenges_expires_at", "enrollment_challenges", ["expires_at"])
    op.create_table(
        "devices",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "fleet_id",
            sa.String(32),
            _fk("devices", "fleet_id", "fleets", "CASCADE"),
            nullable=False,
        ),
        sa.Column("serial", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ek_hash", sa.String(64), nullable=False),
        sa.Column("key_public", sa.LargeBinary, nullable=False),
        sa.Column("cert_serial", sa.String(64), nullable=False),
        sa.Column("cert_sha256", sa.String(64), nullable=False),
        sa.Column("certificate", sa.Text, nullable=False),
        sa.Column("api_key_hash", sa.String(64), nullable=False),
        sa.Column("api_key_prefix", sa.String(16), nullable=False),
        sa.Column(
            "provisioning_key_id",
            sa.String(32),
            _fk("devices", "provisioning_key_id", "provisioning_keys", "SET NULL"),
            nullable=True,
        ),
        sa.Column("os_version", sa.String(256), nullable=True),
        sa.Column("agent_version", sa.String(256), nullable=True),
        sa.Column("note", sa.String(256), nullable=True),
        sa.Column("target_release", sa.String(128), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.UniqueConstraint("cert_sha256", name="uq_devices_cert_sha256"),
        sa.UniqueConstraint("api_key_hash", name="uq_devices_api_key_hash"),
    )
    op.create_index("ix_devices_fleet_id", "devices", ["fleet_id"])
    op.create_index("ix_devices_ek_hash", "devices", ["ek_hash"])
    op.create_table(
        "device_env",
        sa.Column(
            "device_id",
            sa.String(32),
            _fk("device_env", "device_id", "devices", "CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "device_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "device_id",
            sa.String(32),
            _fk("device_records", "device_id", "devices", "CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_device_records_device_id", "device_records", ["device_id"])
    op.create_table(
        "revoked_certificates",
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(32), nullable=False),
        sa.Column("fleet_id", sa.String(32), nullable=False),
        sa.Column("revoked_at", TS, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
    )
    op.create_index("ix_revoked_certificates_device_id", "revoked_certificates", ["device_id"])
    op.create_index("ix_revoked_certificates_fleet_id", "revoked_certificates", ["fleet_id"])


def downgrade() -> None:
    for table in (
        "revoked_certificates",
        "device_records",
        "device_env",
        "devices",
        "enrollment_challenges",
        "provisioning_keys",
    ):
        op.drop_table(table)
