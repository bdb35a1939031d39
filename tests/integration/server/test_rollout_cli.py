"""``bastion release publish|list|target|keyring`` and ``bastion rollout ...`` against a
real server (uvicorn on a free port): a bundle is uploaded and verified, a rollout runs
its canary, a device's signed "fell back" report pauses it, and status shows why."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.bundlekit import release_keys, synthetic_bundle

from bastion.cli.main import main
from bastion.device.update.report import ReportFields, build_report
from bastion.formats.update_report import UpdateResult
from bastion.tpm.software import SoftwareTpm

from .devicekit import FleetWorld, serve_on_loopback, shared_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetWorld, str]]:
    with (
        shared_world("sqlite", tmp_path_factory.mktemp("rolloutcli")) as world,
        serve_on_loopback(world.client.app) as url,
    ):
        yield world, url


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_publish_rollout_fell_back_status(  # type: ignore[no-untyped-def]
    served, tmp_path: Path, monkeypatch, capsys
) -> None:
    world, url = served
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.setenv("BASTION_TOKEN", world.headers["admin"]["Authorization"].split()[1])
    fleet = world.fleet_id
    keys = release_keys("cli")
    ring = tmp_path / "ring.pem"
    ring.write_bytes(keys.ca.public_bytes(serialization.Encoding.PEM))
    bundle = tmp_path / "b.raucb"
    bundle.write_bytes(synthetic_bundle(keys, 12, version="9.1.0", svn=4))
    code, out, err = _run(
        capsys, "release", "server", "keyring", fleet, "--set", str(ring), "--server", url
    )
    assert code == 0, err
    code, out, err = _run(
        capsys, "release", "server", "publish", fleet, str(bundle), "--server", url, "--json"
    )
    assert code == 0, err
    published = json.loads(out)
    assert (published["version"], published["svn"]) == ("9.1.0", 4)
    # a bundle signed by another CA: refused with the verification exit code
    forged = tmp_path / "f.raucb"
    forged.write_bytes(synthetic_bundle(release_keys("x"), 8, version="9.2.0"))
    code, out, err = _run(
        capsys, "release", "server", "publish", fleet, str(forged), "--server", url
    )
    assert code != 0 and "chain" in err
    code, out, err = _run(capsys, "release", "server", "list", fleet, "--server", url, "--json")
    assert code == 0 and [r["version"] for r in json.loads(out)] == ["9.1.0"]
    # one device, tagged for the canary
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    identity = world.enrol(tpm, world.create_key(), serial="cli-dev")
    headers = world.device_headers(identity, tpm)
    code, out, err = _run(
        capsys, "rollout", "tag", fleet, identity.device_id, "lab", "--server", url
    )
    assert code == 0 and "lab" in out, err
    code, out, err = _run(
        capsys, "rollout", "start", fleet, "--release", "9.1.0", "--canary",
        "--wave", "canary:tag=lab:failure=0", "--wave", "rest:100%", "--server", url, "--json",
    )  # fmt: skip
    assert code == 0, err
    rollout = json.loads(out)
    assert rollout["waves"][0]["canary"] and rollout["waves"][0]["assigned"] == 1
    code, out, err = _run(capsys, "rollout", "start", fleet, "--release", "9.1.0",
                          "--wave", "bad", "--server", url)  # fmt: skip
    assert code != 0 and "NAME:SELECTOR" in err
    # the device falls back and says why, signed in its TPM
    c = world.client
    nonce = base64.b64decode(
        c.post("/v1/device/update/report-nonce", headers=headers).json()["nonce"]
    )
    fields = ReportFields(
        identity.device_id, "9.1.0", "a", 3, UpdateResult.FELL_BACK, "boot counter ran out"
    )
    signed = build_report(tpm, identity.key, fields, nonce)
    sent = c.post(
        "/v1/device/update/report",
        json={"report": base64.b64encode(signed).decode()},
        headers=headers,
    )
    assert sent.status_code == 200 and sent.json()["rollout_state"] == "paused", sent.text
    code, out, err = _run(capsys, "rollout", "status", fleet, "--server", url)
    assert code == 0, err
    assert "paused" in out and f"{identity.device_id}: fell back: boot counter ran out" in out
    code, out, err = _run(capsys, "rollout", "list", fleet, "--server", url, "--json")
    assert json.loads(out)[0]["state"] == "paused"
    for action, state in (("resume", "running"), ("pause", "paused"), ("abort", "aborted")):
        code, out, err = _run(capsys, "rollout", action, fleet, rollout["id"], "--server", url,
                              "--json")  # fmt: skip
        assert code == 0 and json.loads(out)["state"] == state, err
    code, out, err = _run(capsys, "release", "server", "target", fleet, "9.1.0", "--server", url)
    assert code == 0 and "9.1.0" in out, err
