"""Revision 0020_pcr_default on both databases: a fleet row holding the container chain's
default selection moves to the EFI chain's, a chosen selection stays, and it downgrades."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _alembic(db: Any, verb: str, target: str) -> None:
    from alembic import command
    from alembic.config import Config

    from bastion.server.db.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, verb)(cfg, target)


def _selections(db: Any) -> dict[str, str]:
    from sqlalchemy import text

    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT fleet_id, pcr_selection FROM fleet_attestation"))
        return {r[0]: r[1] for r in rows}


def test_old_default_moves_and_a_chosen_selection_stays(make_app: Any) -> None:
    from sqlalchemy import text

    db = make_app().state.ctx.db
    _alembic(db, "downgrade", "0018_scale")
    with db.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO organisations (id, name, require_2fa, created_at) "
                 "VALUES ('o1', 'old', false, CURRENT_TIMESTAMP)")
        )  # fmt: skip
        for fleet, selection in (("f1", "sha256:0,4,7,11,15"), ("f2", "sha256:7,11")):
            conn.execute(
                text("INSERT INTO fleets (id, org_id, name, config, created_at) "
                     "VALUES (:f, 'o1', :f, '{}', CURRENT_TIMESTAMP)"),
                {"f": fleet},
            )  # fmt: skip
            conn.execute(
                text("INSERT INTO fleet_attestation (fleet_id, gating, interval_seconds, "
                     "svn_floor, pcr_selection, posture_policy) "
                     "VALUES (:f, true, 3600, 0, :s, '{}')"),
                {"f": fleet, "s": selection},
            )  # fmt: skip
    db.upgrade()
    assert _selections(db) == {"f1": "sha256:0,4,7,9,11", "f2": "sha256:7,11"}
    _alembic(db, "downgrade", "0018_scale")
    assert _selections(db) == {"f1": "sha256:0,4,7,11,15", "f2": "sha256:7,11"}
    db.upgrade()


def test_a_fleet_without_settings_gets_the_efi_chain_default() -> None:
    from bastion.server.attestation.models import DEFAULT_SELECTION
    from bastion.tpm.base import PcrSelection

    assert PcrSelection.parse(DEFAULT_SELECTION).indexes == (0, 4, 7, 9, 11)
