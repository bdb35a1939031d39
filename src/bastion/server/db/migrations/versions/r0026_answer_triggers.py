"""The device answer cache's triggers: a write to a table a heartbeat answer reads notifies.

Revision ID: 0026_answer_triggers
Revises: 0025_verdict_latest_index
Owner: api (docs/adr/0044-device-answer-cache.md).

On PostgreSQL every table below gets a row trigger that runs
``pg_notify('bastion_answers', ...)`` when a row is inserted, deleted or really changed
(an UPDATE that leaves the row as it was, such as enrolment's fleet lock, sends
nothing), and a statement trigger for TRUNCATE. The payload is the row's device id (old
and new row, where the table names a device), else ``*``. An UPDATE of ``devices`` that
changes only ``last_seen_at`` (the once-a-minute presence write) sends
``seen:<device id>:<last_seen_at>`` instead: the device's answers stay, but those that
show ``last_seen_at``.
PostgreSQL delivers the notifications when the writing transaction commits, and drops
repeats of one payload within one transaction. Each server process listens
(:class:`bastion.server.answers.Listener`) and drops the answers the change may
affect. The list matches :data:`bastion.server.answers.WATCHED`; a test compares the two
and the tables the heartbeat routes really read.

SQLite keeps no answers (other processes write the same file and there is no
notification), so there is nothing to do there.
"""

from __future__ import annotations

from alembic import op

revision = "0026_answer_triggers"
down_revision = "0025_verdict_latest_index"
branch_labels = None
depends_on = None

#: table -> column naming the device its rows belong to (None: fleet-wide)
TABLES: dict[str, str | None] = {
    "devices": "id",
    "device_env": "device_id",
    "device_tags": "device_id",
    "attestation_verdicts": "device_id",
    "rollout_devices": "device_id",
    "fleets": None,
    "fleet_env": None,
    "fleet_attestation": None,
    "fleet_golden": None,
    "fleet_targets": None,
    "releases": None,
    "rollouts": None,
    "rollout_waves": None,
}
#: table -> the column whose lone change is a presence write (``seen:`` payload)
PRESENCE: dict[str, str] = {"devices": "last_seen_at"}

FUNCTION = """
CREATE OR REPLACE FUNCTION bastion_answers_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    column_name text := TG_ARGV[0];
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('bastion_answers', '*');
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND to_jsonb(OLD) = to_jsonb(NEW) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND TG_NARGS > 1
       AND (to_jsonb(OLD) - TG_ARGV[1]) = (to_jsonb(NEW) - TG_ARGV[1]) THEN
        PERFORM pg_notify(
            'bastion_answers',
            'seen:' || coalesce(to_jsonb(NEW) ->> column_name, '') || ':'
                || coalesce(to_jsonb(NEW) ->> TG_ARGV[1], '')
        );
        RETURN NULL;
    END IF;
    IF column_name IS NULL THEN
        PERFORM pg_notify('bastion_answers', '*');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('bastion_answers', coalesce(to_jsonb(OLD) ->> column_name, '*'));
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        PERFORM pg_notify('bastion_answers', coalesce(to_jsonb(NEW) ->> column_name, '*'));
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    for table, column in TABLES.items():
        arguments = [f"'{a}'" for a in (column, PRESENCE.get(table)) if a is not None]
        argument = ", ".join(arguments)
        op.execute(
            f"CREATE TRIGGER bastion_answers AFTER INSERT OR UPDATE OR DELETE "
            f"ON {table} FOR EACH ROW EXECUTE FUNCTION bastion_answers_changed({argument})"
        )
        op.execute(
            f"CREATE TRIGGER bastion_answers_truncate AFTER TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION bastion_answers_changed()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS bastion_answers ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS bastion_answers_truncate ON {table}")
    op.execute("DROP FUNCTION IF EXISTS bastion_answers_changed()")
