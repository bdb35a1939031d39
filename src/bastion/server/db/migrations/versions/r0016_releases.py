"""Releases, rollouts and signed device update reports.

Revision ID: 0016_releases
Revises: 0015_attestation
Owner: releases and rollouts (docs/adr/0031-rollouts.md).

* ``releases``: bundles in the file store or at an external URL, per fleet, with their
  manifest, SVN and golden PCRs; ``release_keyrings``: the certificates uploaded
  bundles must chain to; ``fleet_targets``: the fleet's target release (a reference,
  replacing the free-form ``devices.target_release`` string, left unused);
* ``rollouts``, ``rollout_waves``, ``rollout_devices``: waves, thresholds, and each
  device's wave and newest verified result;
* ``update_report_nonces``, ``update_reports``: single-use report nonces and every
  verified signed report; ``device_tags``: operator labels that waves select by.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_releases"
down_revision = "0015_attestation"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=False)


def _fk(table: str, column: str, target: str) -> sa.ForeignKey:
    return sa.ForeignKey(f"{target}.id", ondelete="CASCADE", name=f"fk_{table}_{column}_{target}")


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("fleet_id", sa.String(32), _fk("releases", "fleet_id", "fleets"), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("compatible", sa.String(256), nullable=False),
        sa.Column("svn", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("length", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("manifest", sa.Text, nullable=True),
        sa.Column("signer", sa.String(512), nullable=True),
        sa.Column("golden_statement", sa.LargeBinary, nullable=True),
        sa.Column("golden_pcrs", sa.Text, nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("fleet_id", "version", name="uq_releases_fleet_version"),
    )
    op.create_index("ix_releases_fleet_id", "releases", ["fleet_id"])
    op.create_table(
        "release_keyrings",
        sa.Column(
            "fleet_id",
            sa.String(32),
            _fk("release_keyrings", "fleet_id", "fleets"),
            primary_key=True,
        ),
        sa.Column("keyring", sa.Text, nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "fleet_targets",
        sa.Column(
            "fleet_id", sa.String(32), _fk("fleet_targets", "fleet_id", "fleets"), primary_key=True
        ),
        sa.Column(
            "release_id",
            sa.String(32),
            _fk("fleet_targets", "release_id", "releases"),
            nullable=False,
        ),
        sa.Column("set_by", sa.String(128), nullable=False),
        sa.Column("set_at", TS, nullable=False),
    )
    op.create_index("ix_fleet_targets_release_id", "fleet_targets", ["release_id"])
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("fleet_id", sa.String(32), _fk("rollouts", "fleet_id", "fleets"), nullable=False),
        sa.Column(
            "release_id", sa.String(32), _fk("rollouts", "release_id", "releases"), nullable=False
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("active_wave", sa.Integer, nullable=False),
        sa.Column("paused_reason", sa.Text, nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_rollouts_fleet_id", "rollouts", ["fleet_id"])
    op.create_table(
        "rollout_waves",
        sa.Column(
            "rollout_id",
            sa.String(32),
            _fk("rollout_waves", "rollout_id", "rollouts"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("canary", sa.Boolean, nullable=False),
        sa.Column("percent", sa.Integer, nullable=True),
        sa.Column("tag", sa.String(64), nullable=True),
        sa.Column("devices", sa.Text, nullable=True),
        sa.Column("success_percent", sa.Integer, nullable=False),
        sa.Column("failure_percent", sa.Integer, nullable=False),
        sa.Column("acknowledged_failures", sa.Integer, nullable=False),
    )
    op.create_table(
        "rollout_devices",
        sa.Column(
            "rollout_id",
            sa.String(32),
            _fk("rollout_devices", "rollout_id", "rollouts"),
            primary_key=True,
        ),
        sa.Column(
            "device_id",
            sa.String(32),
            _fk("rollout_devices", "device_id", "devices"),
            primary_key=True,
        ),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("reported_at", TS, nullable=True),
    )
    op.create_index(
        "ix_rollout_devices_rollout_wave", "rollout_devices", ["rollout_id", "wave", "result"]
    )
    op.create_table(
        "update_report_nonces",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "device_id",
            sa.String(32),
            _fk("update_report_nonces", "device_id", "devices"),
            nullable=False,
        ),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_update_report_nonces_device_id", "update_report_nonces", ["device_id"])
    op.create_index("ix_update_report_nonces_expires_at", "update_report_nonces", ["expires_at"])
    op.create_table(
        "update_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "device_id",
            sa.String(32),
            _fk("update_reports", "device_id", "devices"),
            nullable=False,
        ),
        sa.Column("fleet_id", sa.String(32), nullable=False),
        sa.Column("rollout_id", sa.String(32), nullable=True),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("slot", sa.String(16), nullable=False),
        sa.Column("svn", sa.BigInteger, nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("tpm_clock", sa.BigInteger, nullable=False),
        sa.Column("signed", sa.LargeBinary, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_update_reports_device_id", "update_reports", ["device_id"])
    op.create_index("ix_update_reports_fleet_id", "update_reports", ["fleet_id"])
    op.create_table(
        "device_tags",
        sa.Column(
            "device_id", sa.String(32), _fk("device_tags", "device_id", "devices"), primary_key=True
        ),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_device_tags_tag", "device_tags", ["tag"])
    # devices.target_release (the old free-form pin) stays in the table, unused and no
    # longer mapped: dropping it would make SQLite recreate ``devices``, and the copy's
    # DROP TABLE cascades to every row that references a device (records, verdicts)


def downgrade() -> None:
    op.drop_index("ix_device_tags_tag", table_name="device_tags")
    op.drop_table("device_tags")
    op.drop_index("ix_update_reports_fleet_id", table_name="update_reports")
    op.drop_index("ix_update_reports_device_id", table_name="update_reports")
    op.drop_table("update_reports")
    op.drop_index("ix_update_report_nonces_expires_at", table_name="update_report_nonces")
    op.drop_index("ix_update_report_nonces_device_id", table_name="update_report_nonces")
    op.drop_table("update_report_nonces")
    op.drop_index("ix_rollout_devices_rollout_wave", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_table("rollout_waves")
    op.drop_index("ix_rollouts_fleet_id", table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_index("ix_fleet_targets_release_id", table_name="fleet_targets")
    op.drop_table("fleet_targets")
    op.drop_table("release_keyrings")
    op.drop_index("ix_releases_fleet_id", table_name="releases")
    op.drop_table("releases")
