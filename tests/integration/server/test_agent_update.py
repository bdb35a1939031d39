"""The agent drives an update end to end (ADR 0038) against a real server on loopback.

The build machine makes a TUF repository (``keys init``, ``tuf init``, ``tuf delegate``,
``release build``, ``release publish``); the fleet server serves it at ``/tuf/`` and
gets the same bundle (``release server publish``). A sim device running 1.0 is
provisioned and ``update configure``d for the server's TUF repository. An operator
starts a rollout of 2.0 and queues ``check-update``; ``agent run --once`` (every request
signed in the device's TPM) installs 2.0 into slot b and the sim firmware boots it in
trial; the next ``agent run --once`` (the agent's start after that boot) runs the health
checks and commits (fuses to SVN 2) or, when a required check fails, marks the slot
bad, reboots into slot a and reports "fell back" with the failed check, signed in the
TPM with the server's nonce, its TPM clock certified by the AK (a clock only claimed
is refused). The rollout's wave shows the device committed, or the device among its
problems with the reason. Without a command, the running agent loop checks by itself
every ``update_check_seconds`` of the fleet config and goes the same way.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need_tool
from tests.updatekit import HARDWARE, PRODUCT, ReleaseFiles, make_device

from bastion.cli._device_fleet import _device_tpm
from bastion.cli.main import main
from bastion.device.agent.signing import TpmRequestSigner
from bastion.device.provision import DeviceIdentity
from bastion.device.update.report import ReportFields, report_update
from bastion.errors import VerificationError
from bastion.formats.update_report import UpdateResult
from bastion.io.http import HttpClient

from .devicekit import FleetWorld, serve_on_loopback, shared_world

pytestmark = pytest.mark.integration

BLOCK = 4096


def _tuf_e2e() -> Any:
    """The build-machine helpers of tests/integration/test_update_tuf_e2e.py."""
    import importlib.util

    path = Path(__file__).parents[1] / "test_update_tuf_e2e.py"
    spec = importlib.util.spec_from_file_location("_agentupd_tuf_e2e", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def _ok(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, data, err = _run(capsys, *argv)
    assert code == 0, (argv, err)
    return data


@pytest.fixture
def fleet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FleetWorld, str, Any, Path]]:
    """A TUF repository with release 2.0, served by a fleet server that also holds 2.0."""
    need_tool("mksquashfs")
    e2e = _tuf_e2e()
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    repo = e2e.Repo(tmp_path / "build", capsys)
    base = random.Random(7).randbytes(40 * BLOCK)
    new_root = bytearray(base)
    new_root[5 * BLOCK : 6 * BLOCK] = random.Random(8).randbytes(BLOCK)
    bundle = repo.build("2.0", 2, bytes(new_root), e2e._uki(b"2.0"))
    repo.publish(bundle)
    with (
        shared_world("sqlite", tmp_path / "server", tuf_dir=repo.path) as world,
        serve_on_loopback(world.client.app) as url,
    ):
        monkeypatch.setenv("BASTION_TOKEN", world.headers["admin"]["Authorization"].split()[1])
        fid = world.fleet_id
        _ok(capsys, "release", "server", "keyring", fid, "--set", str(repo.ca), "--server", url)
        _ok(capsys, "release", "server", "publish", fid, str(bundle), "--server", url)
        factory = ReleaseFiles("1.0", 1, base, b"v" * BLOCK, e2e._uki(b"1.0"), tmp_path / "none")
        dev = tmp_path / "dev"
        make_device(dev, factory)
        yield world, url, repo, dev


def _device(
    world: FleetWorld, url: str, repo: Any, dev: Path, capsys: Any, health: dict[str, Any]
) -> str:
    """Provision the sim device and point it at the server's TUF repository."""
    key_file = dev.parent / "pk"
    key_file.write_text(world.create_key() + "\n")
    _ok(capsys, "device", "provision", str(dev), "--server", url, "--provisioning-key",
        str(key_file))  # fmt: skip
    spec = dev.parent / "health.json"
    spec.write_text(json.dumps(health))
    _ok(capsys, "update", "configure", str(dev), "--product", PRODUCT, "--hardware", HARDWARE,
        "--channel", "stable", "--metadata-url", f"{url}/tuf/metadata", "--targets-url",
        f"{url}/tuf/targets", "--tuf-root", str(repo.path / "metadata" / "1.root.json"),
        "--keyring", str(repo.ca), "--health", str(spec))  # fmt: skip
    return DeviceIdentity.load(dev).device_id


def _as(world: FleetWorld, role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_TOKEN", world.headers[role]["Authorization"].split()[1])


def _agent_once(dev: Path, url: str, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("BASTION_TOKEN", raising=False)  # the device has no operator token
    return _ok(capsys, "agent", "run", str(dev), "--once", "--server", url)


def _start_rollout_and_queue(
    world: FleetWorld, url: str, device_id: str, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> str:
    _as(world, "operator", monkeypatch)
    fid = world.fleet_id
    rollout = _ok(capsys, "rollout", "start", fid, "--release", "2.0", "--wave", "all:100%",
                  "--server", url)  # fmt: skip
    assert rollout["waves"][0]["assigned"] == 1
    queued = _ok(capsys, "device", "exec", device_id, "check-update", "--fleet", fid, "--server",
                 url)  # fmt: skip
    assert queued["status"] == "queued"
    return str(queued["id"])


def _status(world: FleetWorld, url: str, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    _as(world, "viewer", monkeypatch)
    return _ok(capsys, "rollout", "status", world.fleet_id, "--server", url)


def _queue(world: FleetWorld, url: str, device_id: str, capsys: Any, monkeypatch: Any) -> str:
    _as(world, "operator", monkeypatch)
    queued = _ok(capsys, "device", "exec", device_id, "check-update", "--fleet", world.fleet_id,
                 "--server", url)  # fmt: skip
    return str(queued["id"])


def _command(world: FleetWorld, url: str, device_id: str, command_id: str, capsys: Any,
             monkeypatch: Any) -> Any:  # fmt: skip
    _as(world, "viewer", monkeypatch)
    rows = _ok(capsys, "device", "commands", device_id, "--fleet", world.fleet_id, "--server",
               url)  # fmt: skip
    [row] = [r for r in rows if r["id"] == command_id]
    return row


def test_rollout_check_update_install_reboot_commit_report(  # type: ignore[no-untyped-def]
    fleet, capsys, monkeypatch
) -> None:
    world, url, repo, dev = fleet
    device_id = _device(world, url, repo, dev, capsys, {"required": [{"command": ["true"]}]})
    first = _start_rollout_and_queue(world, url, device_id, capsys, monkeypatch)
    assert _status(world, url, capsys, monkeypatch)["waves"][0]["pending"] == 1

    ran = _agent_once(dev, url, capsys, monkeypatch)
    assert ran["commands"] == 1
    cmd = _command(world, url, device_id, first, capsys, monkeypatch)
    assert cmd["status"] == "succeeded", cmd
    assert cmd["output"].startswith("installed 2.0 (svn 2) into slot b")
    state = _ok(capsys, "update", "status", str(dev))
    assert state["booted"]["slot"] == "b" and state["booted"]["trial"] is True
    assert state["slots"]["b"]["state"] == "trial" and state["fuse_counter"] == 1
    # nothing is believed before the device's signed report
    assert _status(world, url, capsys, monkeypatch)["waves"][0]["committed"] == 0

    _agent_once(dev, url, capsys, monkeypatch)  # the agent's start after the boot
    state = _ok(capsys, "update", "status", str(dev))
    assert state["slots"]["b"]["state"] == "committed" and state["fuse_counter"] == 2
    assert state["last_result"]["result"] == "committed"
    assert state["last_result"]["reported"] is True
    status = _status(world, url, capsys, monkeypatch)
    wave = status["waves"][0]
    assert (wave["committed"], wave["pending"], wave["fell_back"]) == (1, 0, 0), wave
    assert status["state"] == "completed" and status["problems"] == []
    reports = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{device_id}/update-reports",
        headers=world.headers["viewer"],
    ).json()
    assert [(r["version"], r["result"], r["slot"], r["svn"]) for r in reports] == [
        ("2.0", "committed", "b", 2)
    ]
    assert reports[0]["tpm_clock"] > 0  # the server believed it: the AK's certify signed it
    # a clock only claimed (signed by the identity key, no AK certify) is refused
    identity = DeviceIdentity.load(dev)
    with _device_tpm(dev, None) as tpm:
        signer = TpmRequestSigner(tpm, identity, world.ctx.clock)
        http = HttpClient.over(world.client, signer=signer)
        claimed = ReportFields(device_id, "2.0", "b", 2, UpdateResult.COMMITTED, "", 42)
        with pytest.raises(VerificationError, match="claimed without the AK's certify"):
            report_update(tpm, identity.key, http, None, claimed)
    # the next "update now" finds the device on the fleet's target: nothing to do
    second = _queue(world, url, device_id, capsys, monkeypatch)
    _agent_once(dev, url, capsys, monkeypatch)
    again = _command(world, url, device_id, second, capsys, monkeypatch)
    assert again["status"] == "succeeded" and "running 2.0" in again["output"], again
    assert _ok(capsys, "update", "status", str(dev))["booted"]["slot"] == "b"


def test_failed_health_check_falls_back_and_the_server_says_why(  # type: ignore[no-untyped-def]
    fleet, capsys, monkeypatch
) -> None:
    world, url, repo, dev = fleet
    failing = {"required": [{"command": ["false"]}]}
    device_id = _device(world, url, repo, dev, capsys, failing)
    _start_rollout_and_queue(world, url, device_id, capsys, monkeypatch)
    _agent_once(dev, url, capsys, monkeypatch)
    assert _ok(capsys, "update", "status", str(dev))["booted"]["slot"] == "b"

    _agent_once(dev, url, capsys, monkeypatch)  # trial fails -> reboot -> slot a, fell back
    state = _ok(capsys, "update", "status", str(dev))
    assert state["booted"]["slot"] == "a" and state["fuse_counter"] == 1
    assert state["slots"]["b"]["state"] == "failed"
    assert state["last_result"]["result"] == "fell-back"
    status = _status(world, url, capsys, monkeypatch)
    wave = status["waves"][0]
    assert (wave["committed"], wave["fell_back"]) == (0, 1), wave
    [problem] = status["problems"]
    assert problem["device_id"] == device_id and problem["result"] == "fell_back"
    assert "command false: exited 1" in problem["reason"]
    reports = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{device_id}/update-reports",
        headers=world.headers["viewer"],
    ).json()
    assert [(r["version"], r["result"], r["slot"], r["svn"]) for r in reports] == [
        ("2.0", "fell_back", "a", 1)
    ]
    assert reports[0]["tpm_clock"] > 0
    # told again: 2.0 failed its trial here, so the device does not install it again
    second = _queue(world, url, device_id, capsys, monkeypatch)
    _agent_once(dev, url, capsys, monkeypatch)
    again = _command(world, url, device_id, second, capsys, monkeypatch)
    assert again["status"] == "failed" and "failed its trial on this device" in again["output"]
    state = _ok(capsys, "update", "status", str(dev))
    assert state["booted"]["slot"] == "a" and state["slots"]["b"]["state"] == "failed"


def test_the_agent_loop_checks_periodically_by_the_fleet_config(  # type: ignore[no-untyped-def]
    fleet, capsys, monkeypatch
) -> None:
    """No command: the fleet config's ``update_check_seconds`` makes the running agent
    check, install, reboot (sim) and, at its next cycle, commit and report."""
    import threading
    import time

    from bastion.device.agent.actions import SystemActions
    from bastion.device.agent.agent import Agent, AgentOptions
    from bastion.device.agent.updater import Updater
    from bastion.device.platform.sim import SimPlatform
    from bastion.device.update import slots, tuf_update
    from bastion.io import websocket
    from bastion.io.clock import SystemClock
    from bastion.io.runner import CommandRunner

    world, url, repo, dev = fleet
    device_id = _device(world, url, repo, dev, capsys, {"required": [{"command": ["true"]}]})
    _as(world, "admin", monkeypatch)
    _ok(capsys, "fleet", "config", "set", world.fleet_id, "update_check_seconds=1",
        "--server", url)  # fmt: skip
    _as(world, "operator", monkeypatch)
    _ok(capsys, "rollout", "start", world.fleet_id, "--release", "2.0", "--wave", "all:100%",
        "--server", url)  # fmt: skip
    identity = DeviceIdentity.load(dev)
    plat = SimPlatform(dev)

    def _sim_reboot(platform: SimPlatform) -> None:
        slots.firmware_boot(platform)  # the sim firmware's choice, as `update reboot`

    with _device_tpm(dev, None) as tpm:
        signer = TpmRequestSigner(tpm, identity, SystemClock())
        with HttpClient(url, signer=signer) as http:
            agent = Agent(
                http,
                dev / "agent",
                SystemActions(CommandRunner()),
                lambda headers: websocket.connect(url, "/v1/device/channel", headers),
                SystemClock(),
                options=AgentOptions(heartbeat_seconds=0.3, update_check_seconds=3600),
            )
            agent.updater = Updater(
                plat,
                dev / tuf_update.METADATA_DIR,
                http,
                tpm=tpm,
                identity_key=lambda: identity.key,
                ak=lambda: identity.ak,
                device_id=device_id,
                reboot=lambda: _sim_reboot(plat),
                note=agent.note,
            )
            thread = threading.Thread(target=agent.run, kwargs={"max_attempts": 3})
            thread.start()
            try:
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    last = _ok(capsys, "update", "status", str(dev))["last_result"]
                    if last.get("reported"):
                        break
                    time.sleep(0.3)
            finally:
                agent.stop()
                thread.join(30)
    assert not thread.is_alive()
    state = _ok(capsys, "update", "status", str(dev))
    assert state["booted"]["slot"] == "b" and state["slots"]["b"]["state"] == "committed"
    assert state["last_result"]["result"] == "committed" and state["fuse_counter"] == 2
    wave = _status(world, url, capsys, monkeypatch)["waves"][0]
    assert wave["committed"] == 1, wave
