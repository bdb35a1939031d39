"""The stored TCG event log of a verdict over the API and the CLI:
``GET /v1/fleets/{f}/devices/{d}/attestations/{verdict}/eventlog`` (viewer) and
``bastion device verdict-log``. The negative table first; the bytes are the device's own
and ``tpm2_eventlog`` reads the file the CLI writes.

Runs on SQLite and PostgreSQL (the attested fleet of test_attestation.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.cli.main import main
from bastion.formats import eventlog as el

from .devicekit import FleetWorld, serve_on_loopback
from .test_attestation import Dev, attested_world_fixture

pytestmark = pytest.mark.integration


world = attested_world_fixture("verdict-eventlog")


@pytest.fixture(scope="module")
def two(
    world: FleetWorld, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Dev, list[int], Dev, int]:
    """Device A attested twice (its older verdict's log is forgotten), device B once."""
    folder = tmp_path_factory.mktemp("devs")
    a, b = Dev(world, folder / "a", "evlog-a"), Dev(world, folder / "b", "evlog-b")
    verdicts_a = [a.attest()["id"], a.attest({"selinux": "permissive"})["id"]]
    return a, verdicts_a, b, b.attest()["id"]


def _url(world: FleetWorld, device_id: str, verdict_id: int, fleet: str | None = None) -> str:
    fleet_id = fleet or world.fleet_id
    return f"/v1/fleets/{fleet_id}/devices/{device_id}/attestations/{verdict_id}/eventlog"


# --- refused ---------------------------------------------------------------------------------

CASES = [
    # (case, who, which device, which verdict, fleet, status)
    ("another device's verdict", "viewer", "a", "b", None, 404),
    ("an older verdict whose log was not kept", "viewer", "a", "a-old", None, 404),
    ("an unknown verdict", "viewer", "a", "unknown", None, 404),
    ("an unknown device", "viewer", "nobody", "a", None, 404),
    ("the device through the fleet's other id", "viewer", "a", "a", "other", 404),
    ("no credentials", "anonymous", "a", "a", None, 401),
    ("a stranger from another organisation", "stranger", "a", "a", None, 404),
]


@pytest.mark.parametrize(
    ("who", "device", "verdict", "fleet", "status"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_refused(
    world: FleetWorld,
    two: tuple[Dev, list[int], Dev, int],
    who: str,
    device: str,
    verdict: str,
    fleet: str | None,
    status: int,
) -> None:
    a, verdicts_a, _b, verdict_b = two
    device_id = {"a": a.identity.device_id, "nobody": "0" * 32}[device]
    verdict_id = {"a": verdicts_a[1], "a-old": verdicts_a[0], "b": verdict_b, "unknown": 10**9}[
        verdict
    ]
    fleet_id = world.other_fleet_id if fleet == "other" else None
    r = world.client.get(_url(world, device_id, verdict_id, fleet_id), headers=world.headers[who])
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")  # an error, never a log
    if verdict == "a-old":
        assert "only a device's newest verdict keeps its log" in r.json()["detail"]


def test_a_device_cannot_read_its_own_log_back(
    world: FleetWorld, two: tuple[Dev, list[int], Dev, int]
) -> None:
    a, verdicts_a, _b, _vb = two
    r = world.client.get(_url(world, a.identity.device_id, verdicts_a[1]), headers=a.headers)
    assert r.status_code in (401, 403), r.text


# --- read --------------------------------------------------------------------------------------


def test_the_viewer_gets_the_devices_bytes(
    world: FleetWorld, two: tuple[Dev, list[int], Dev, int]
) -> None:
    a, verdicts_a, b, verdict_b = two
    for dev, verdict_id in ((a, verdicts_a[1]), (b, verdict_b)):
        r = world.client.get(
            _url(world, dev.identity.device_id, verdict_id), headers=world.headers["viewer"]
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        assert f'filename="eventlog-{verdict_id}.bin"' in r.headers["content-disposition"]
        assert r.content == dev.log


def test_the_cli_writes_a_file_tpm2_eventlog_reads(
    world: FleetWorld,
    two: tuple[Dev, list[int], Dev, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tool = need_tool("tpm2_eventlog")
    a, verdicts_a, _b, _vb = two
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.setenv("BASTION_TOKEN", world.headers["viewer"]["Authorization"].split()[1])
    out = tmp_path / "log.bin"
    device = a.identity.device_id
    with serve_on_loopback(world.client.app) as url:
        capsys.readouterr()
        assert main(["device", "verdicts", device, "--fleet", world.fleet_id, "--server", url]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in listing] == [str(v) for v in reversed(verdicts_a)]
        code = main(["device", "verdict-log", device, str(verdicts_a[1]), "--fleet",
                     world.fleet_id, "--server", url, "-o", str(out)])  # fmt: skip
        assert code == 0
        assert out.read_bytes() == a.log
        # the older verdict's log is gone: exit non-zero, nothing written
        missing = tmp_path / "old.bin"
        code = main(["device", "verdict-log", device, str(verdicts_a[0]), "--fleet",
                     world.fleet_id, "--server", url, "-o", str(missing)])  # fmt: skip
        assert code != 0 and not missing.exists()
    parsed = subprocess.run([tool, str(out)], capture_output=True, text=True, check=True).stdout
    # the Spec ID header event, then every event of the boot
    assert parsed.count("EventNum:") == 1 + len(el.parse(a.log).events)
