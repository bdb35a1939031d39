"""Attestation: nonces, verdict history, fleet attestation policy (device agent and attestation).

Revision ID: 0015_attestation
Revises: 0014_oidc
Owner: remote attestation (docs/adr/0023-attestation.md).

* ``devices.ak_public`` and ``enrollment_challenges.ak_public``: the AK credential
  activation bound to the device's EK at enrolment (NULL for devices enrolled before:
  they fail attestation with ``ak.unbound`` until re-enrolled);
* ``fleet_attestation``: per-fleet gating, interval, SVN floor, PCR selection, posture
  policy and the product key golden statements are verified with;
* ``fleet_golden``: signed golden-values statements (accepted releases);
* ``attestation_nonces``: open single-use challenges;
* ``attestation_verdicts``: every verdict (history kept).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_attestation"
down_revision = "0014_oidc"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=False)


def _fk(table: str, column: str, target: str) -> sa.ForeignKey:
    return sa.ForeignKey(f"{target}.id", ondelete="CASCADE", name=f"fk_{table}_{column}_{target}")


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("ak_public", sa.LargeBinary, nullable=True))
    with op.batch_alter_table("enrollment_challenges") as batch:
        batch.add_column(sa.Column("ak_public", sa.LargeBinary, nullable=True))
    op.create_table(
        "fleet_attestation",
        sa.Column(
            "fleet_id",
            sa.String(32),
            _fk("fleet_attestation", "fleet_id", "fleets"),
            primary_key=True,
        ),
        sa.Column("gating", sa.Boolean, nullable=False),
        sa.Column("interval_seconds", sa.Integer, nullable=False),
        sa.Column("svn_floor", sa.BigInteger, nullable=False),
        sa.Column("pcr_selection", sa.String(64), nullable=False),
        sa.Column("posture_policy", sa.Text, nullable=False),
        sa.Column("product_key", sa.Text, nullable=True),
        sa.Column("updated_at", TS, nullable=True),
    )
    op.create_table(
        "fleet_golden",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "fleet_id", sa.String(32), _fk("fleet_golden", "fleet_id", "fleets"), nullable=False
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("security_version", sa.BigInteger, nullable=False),
        sa.Column("statement", sa.LargeBinary, nullable=False),
        sa.Column("added_by", sa.String(128), nullable=False),
        sa.Column("added_at", TS, nullable=False),
        sa.UniqueConstraint("fleet_id", "sha256", name="uq_fleet_golden_fleet_sha256"),
    )
    op.create_index("ix_fleet_golden_fleet_id", "fleet_golden", ["fleet_id"])
    op.create_table(
        "attestation_nonces",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "device_id",
            sa.String(32),
            _fk("attestation_nonces", "device_id", "devices"),
            nullable=False,
        ),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_attestation_nonces_device_id", "attestation_nonces", ["device_id"])
    op.create_index("ix_attestation_nonces_expires_at", "attestation_nonces", ["expires_at"])
    op.create_table(
        "attestation_verdicts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "device_id",
            sa.String(32),
            _fk("attestation_verdicts", "device_id", "devices"),
            nullable=False,
        ),
        sa.Column("fleet_id", sa.String(32), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("failures", sa.Text, nullable=False),
        sa.Column("release", sa.String(128), nullable=True),
        sa.Column("security_version", sa.BigInteger, nullable=True),
        sa.Column("clock", sa.BigInteger, nullable=True),
        sa.Column("reset_count", sa.BigInteger, nullable=True),
        sa.Column("restart_count", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_attestation_verdicts_device_id", "attestation_verdicts", ["device_id"])
    op.create_index("ix_attestation_verdicts_fleet_id", "attestation_verdicts", ["fleet_id"])


def downgrade() -> None:
    op.drop_index("ix_attestation_verdicts_fleet_id", table_name="attestation_verdicts")
    op.drop_index("ix_attestation_verdicts_device_id", table_name="attestation_verdicts")
    op.drop_table("attestation_verdicts")
    op.drop_index("ix_attestation_nonces_expires_at", table_name="attestation_nonces")
    op.drop_index("ix_attestation_nonces_device_id", table_name="attestation_nonces")
    op.drop_table("attestation_nonces")
    op.drop_index("ix_fleet_golden_fleet_id", table_name="fleet_golden")
    op.drop_table("fleet_golden")
    op.drop_table("fleet_attestation")
    with op.batch_alter_table("enrollment_challenges") as batch:
        batch.drop_column("ak_public")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("ak_public")
