"""The agent and remote-control CLI against a real server (uvicorn on loopback).

``device provision`` (software TPM in DEV) -> ``device exec ... check-update`` (operator)
-> ``agent run DEV --once --update-hook HOOK`` (the device, every request signed in its
TPM) -> ``device commands --json`` shows the hook's output; a viewer cannot queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.cli.main import main
from bastion.device.provision import DeviceIdentity

from .devicekit import FleetWorld, serve_on_loopback, shared_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetWorld, str]]:
    with (
        shared_world("sqlite", tmp_path_factory.mktemp("agentcli")) as world,
        serve_on_loopback(world.client.app) as url,
    ):
        yield world, url


def test_exec_agent_run_once_and_commands(served, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    world, url = served
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    key_file = tmp_path / "pk"
    key_file.write_text(world.create_key() + "\n")
    dev = tmp_path / "cam"
    assert (
        main(
            [
                "device",
                "provision",
                str(dev),
                "--server",
                url,
                "--provisioning-key",
                str(key_file),
                "--json",
            ]
        )
        == 0
    )
    device_id = DeviceIdentity.load(dev).device_id
    capsys.readouterr()

    def as_role(role: str) -> None:
        monkeypatch.setenv("BASTION_TOKEN", world.headers[role]["Authorization"].split()[1])

    as_role("viewer")
    code = main(
        ["device", "exec", device_id, "check-update", "--fleet", world.fleet_id, "--server", url]
    )
    assert code != 0
    assert "403" in capsys.readouterr().err
    as_role("operator")
    assert (
        main(
            [
                "device",
                "exec",
                device_id,
                "check-update",
                "--fleet",
                world.fleet_id,
                "--server",
                url,
                "--json",
            ]
        )
        == 0
    )
    queued = json.loads(capsys.readouterr().out)
    assert queued["status"] == "queued" and queued["kind"] == "check-update"

    hook = tmp_path / "update-hook"
    hook.write_text("#!/bin/sh\necho 'no update for this device'\n")
    hook.chmod(0o755)
    monkeypatch.delenv("BASTION_TOKEN")
    code = main(
        ["agent", "run", str(dev), "--once", "--server", url, "--update-hook", str(hook), "--json"]
    )
    assert code == 0, capsys.readouterr().err
    ran = json.loads(capsys.readouterr().out)
    assert ran == {"device_id": device_id, "commands": 1}
    assert (dev / "agent" / "env").exists() and (dev / "agent" / "config.json").exists()

    as_role("viewer")
    assert (
        main(
            ["device", "commands", device_id, "--fleet", world.fleet_id, "--server", url, "--json"]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["status"] == "succeeded"
    assert rows[0]["output"].strip() == "no update for this device"
