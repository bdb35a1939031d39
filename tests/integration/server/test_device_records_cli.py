"""``bastion device logs|events`` against a real server (uvicorn on a free loopback port):
all pages, ``--json``, and ``--follow`` (bounded: the poll's sleep is a double that
posts new records, then presses Ctrl-C)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from bastion.cli import _device_records
from bastion.cli.main import main
from bastion.tpm.software import SoftwareTpm

from .test_devices_cli import served  # noqa: F401  (module fixture: server in a thread)

pytestmark = pytest.mark.integration


def _device(world, url: str, folder: Path, serial: str) -> tuple[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    tpm = SoftwareTpm(folder / "tpm.state")
    identity = world.enrol(tpm, world.create_key(), serial=serial)
    return identity.device_id, {"Authorization": f"Bearer {identity.api_key(tpm)}"}


def test_logs_and_events_follow(served, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    world, url = served
    device_id, headers = _device(world, url, tmp_path, "cli-logs")
    lines = [f"line {i}" for i in range(_device_records.PAGE + 5)]  # more than one page
    assert httpx.post(f"{url}/v1/device/logs", json={"lines": lines}, headers=headers).is_success
    body = {"events": [{"type": "boot", "data": {"slot": "a"}}]}
    assert httpx.post(f"{url}/v1/device/events", json=body, headers=headers).is_success
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.setenv("BASTION_TOKEN", world.headers["viewer"]["Authorization"].split()[1])
    where = [device_id, "--fleet", world.fleet_id, "--server", url]

    assert main(["device", "logs", *where]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [x.split("  ", 1)[1] for x in out] == lines
    assert main(["device", "events", *where, "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [(e["type"], e["data"]) for e in events] == [("boot", {"slot": "a"})]

    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            more = {"lines": ["after 1", "after 2"]}
            assert httpx.post(f"{url}/v1/device/logs", json=more, headers=headers).is_success
            return
        raise KeyboardInterrupt

    monkeypatch.setattr(_device_records, "sleep", sleep)
    started = time.monotonic()
    code = main(["device", "logs", *where, "--follow", "--json", "--interval", "0.01"])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    assert time.monotonic() - started < 20
    followed = [json.loads(x)["line"] for x in captured.out.splitlines()]
    assert followed == [*lines, "after 1", "after 2"]
    assert polls == [0.01, 0.01]


def test_logs_of_unknown_device_fails(served, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    world, url = served
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.setenv("BASTION_TOKEN", world.headers["stranger"]["Authorization"].split()[1])
    code = main(["device", "logs", "nope", "--fleet", world.fleet_id, "--server", url])
    assert code != 0
    assert "not found" in capsys.readouterr().err
