"""The device page's TCG event log: stored with the newest verdict (revision
0024_verdict_eventlog), decoded, shown beside the verdict's failures, device-supplied
text rendered inert; the migration goes up and down.

Runs on SQLite and PostgreSQL (the attested fleet of test_attestation.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.attestkit import boot_events

from bastion.formats import eventlog as el
from bastion.server.attestation.models import AttestationVerdict
from bastion.server.ui.security import SESSION_COOKIE
from bastion.server.ui.views import Failure, failure_pcrs

from .devicekit import FleetWorld
from .test_attestation import Dev, attested_world_fixture
from .test_pcr_default_migration import _alembic

pytestmark = pytest.mark.integration

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>\u202etxt.exe\n</td>'


world = attested_world_fixture("dash-eventlog")


class HostileDev(Dev):
    """A device whose boot also measured a hostile string into PCR 12 (not quoted by the
    fleet, so its verdict may still pass: the page must show it inert either way)."""

    def __init__(self, world: FleetWorld, folder: Path, serial: str) -> None:
        super().__init__(world, folder, serial)
        from tests.attestkit import extend

        hostile = el.measure(12, el.EventType.EV_IPL, HOSTILE.encode("utf-16-le") + b"\0\0")
        header = el.parse(extend(self.tpm, [hostile])).spec
        # the log the device reports: its boot, then the hostile event
        self.log = el.EventLog(header, (*boot_events(), hostile)).to_bytes()


def _page(world: FleetWorld, device_id: str, role: str = "viewer") -> str:
    client = TestClient(world.client.app, follow_redirects=False)
    token = world.headers[role]["Authorization"].removeprefix("Bearer ")
    client.cookies.set(SESSION_COOKIE, token, path="/ui")
    r = client.get(f"/ui/fleets/{world.fleet_id}/devices/{device_id}")
    assert r.status_code == 200, r.text
    return r.text


def _table(html: str) -> str:
    found = re.search(r'<table id="eventlog".*?</table>', html, re.S)
    assert found, html
    return found.group(0)


def test_the_newest_verdicts_log_is_decoded_with_its_failures(
    world: FleetWorld, tmp_path: Path
) -> None:
    dev = HostileDev(world, tmp_path, "eventlog-1")
    page = _page(world, dev.identity.device_id)
    assert 'id="eventlog-none"' in page
    assert dev.attest()["ok"]
    failed = dev.attest({"selinux": "permissive"})
    assert [f["id"] for f in failed["failures"]] == ["posture.selinux.permissive"]
    page = _page(world, dev.identity.device_id)
    table = _table(page)
    rows = re.findall(r'<tr data-pcr="(\d+)" data-kind="([a-z-]+)"', table)
    assert len(rows) == len(boot_events()) + 1
    assert ("12", "string") in rows
    assert "EV_IPL" in table
    # the verdict beside the log is the newest one, with its failure ids
    verdict = re.search(r'id="eventlog-verdict".*?</div>', page, re.S)
    assert verdict and "posture.selinux.permissive" in verdict.group(0)
    assert "fail" in verdict.group(0)
    # every digest is the event's own
    for event in boot_events():
        assert event.digest(el.ALG_SHA256).hex() in table


def test_a_hostile_event_string_is_inert(world: FleetWorld, tmp_path: Path) -> None:
    dev = HostileDev(world, tmp_path, "eventlog-2")
    dev.attest()
    page = _page(world, dev.identity.device_id)
    table = _table(page)
    assert "<script" not in page and "<img" not in page.lower()
    assert (
        "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
        in (table)
    )
    # the bidirectional override and the newline are written out, never rendered
    assert "\u202e" not in page and "\\u202etxt.exe\\u000a&lt;/td&gt;" in table
    # and the page still carries its no-script policy
    assert "script-src" not in page


def test_only_the_newest_verdict_keeps_its_log(world: FleetWorld, tmp_path: Path) -> None:
    dev = HostileDev(world, tmp_path, "eventlog-3")
    for _ in range(3):
        dev.attest()
    with world.ctx.db.session(write=False) as session:
        kept = session.execute(
            select(func.count())
            .select_from(AttestationVerdict)
            .where(
                AttestationVerdict.device_id == dev.identity.device_id,
                AttestationVerdict.eventlog.is_not(None),
            )
        ).scalar_one()
        total = session.execute(
            select(func.count())
            .select_from(AttestationVerdict)
            .where(AttestationVerdict.device_id == dev.identity.device_id)
        ).scalar_one()
    assert (kept, total) == (1, 3)


def test_a_verdict_without_a_log_says_so(world: FleetWorld, tmp_path: Path) -> None:
    from sqlalchemy import update

    dev = HostileDev(world, tmp_path, "eventlog-4")
    dev.attest()
    with world.ctx.db.session() as session:
        session.execute(
            update(AttestationVerdict)
            .where(AttestationVerdict.device_id == dev.identity.device_id)
            .values(eventlog=b"\x00garbage")
        )
        session.commit()
    page = _page(world, dev.identity.device_id)
    assert 'id="eventlog-problem"' in page and "cannot be read" in page
    with world.ctx.db.session() as session:
        session.execute(
            update(AttestationVerdict)
            .where(AttestationVerdict.device_id == dev.identity.device_id)
            .values(eventlog=None)
        )
        session.commit()
    assert "no event log is kept" in _page(world, dev.identity.device_id)


def test_failures_name_their_pcrs() -> None:
    failures = (
        Failure("pcr.mismatch.7", ""),
        Failure("component.kernel.mismatch", ""),
        Failure("component.os-release.missing", ""),
        Failure("posture.selinux.permissive", ""),
        Failure("pcr.mismatch.99", ""),
    )
    assert failure_pcrs(failures) == {
        7: ("pcr.mismatch.7",),
        11: ("component.kernel.mismatch", "component.os-release.missing"),
    }


def test_migration_up_and_down(make_app: Any) -> None:
    from sqlalchemy import inspect

    db = make_app().state.ctx.db

    def columns() -> set[str]:
        return {c["name"] for c in inspect(db.engine).get_columns("attestation_verdicts")}

    assert "eventlog" in columns()
    _alembic(db, "downgrade", "0021_release_golden")
    assert "eventlog" not in columns() and "failures" in columns()
    db.upgrade()
    assert "eventlog" in columns()
