"""The agent runs each command at most once, refuses expired ones, and answers first
for reboot (unit: a channel double records what the agent sends)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from bastion.device.agent.agent import Agent
from bastion.io.clock import FixedClock
from bastion.io.http import HttpClient

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def reboot(self) -> None:
        self.calls.append("reboot")

    def restart_service(self, unit: str) -> str:
        self.calls.append(f"restart {unit}")
        return "ok"

    def check_update(self) -> str:
        return ""

    def collect_logs(self) -> list[str]:
        return []

    def wipe(self) -> None:
        self.calls.append("wipe")


class SentChannel:
    def __init__(self, log: list[str]) -> None:
        self.sent: list[dict[str, Any]] = []
        self.log = log

    def send(self, message: dict[str, Any]) -> None:
        self.log.append(f"send {message['id']}")
        self.sent.append(message)


def _agent(tmp_path: Path) -> tuple[Agent, Recorder]:
    http = HttpClient("http://127.0.0.1:9", signer=lambda m, t, b: {})
    actions = Recorder()
    agent = Agent(
        http,
        tmp_path,
        actions,
        lambda h: None,
        FixedClock(NOW),  # type: ignore[arg-type,return-value]
    )
    return agent, actions


def _cmd(cid: str, kind: str, expires: int | None = None, **args: Any) -> dict[str, Any]:
    return {
        "type": "command",
        "id": cid,
        "kind": kind,
        "args": args,
        "expires_at": expires if expires is not None else int(NOW.timestamp()) + 60,
    }


def test_a_command_delivered_twice_runs_once_and_reboot_answers_first(tmp_path: Path) -> None:
    agent, actions = _agent(tmp_path)
    channel = SentChannel(actions.calls)
    agent.handle(_cmd("c1", "reboot"), channel)  # type: ignore[arg-type]
    assert actions.calls == ["send c1", "reboot"]  # the answer goes out before the reboot
    agent2, actions2 = _agent(tmp_path)  # after the reboot: the same command again
    channel2 = SentChannel(actions2.calls)
    agent2.handle(_cmd("c1", "reboot"), channel2)  # type: ignore[arg-type]
    assert actions2.calls == ["send c1"]
    assert channel2.sent[0] == {"type": "result", "id": "c1", "ok": True, "output": "rebooting"}


def test_an_expired_command_is_answered_not_run(tmp_path: Path) -> None:
    agent, actions = _agent(tmp_path)
    channel = SentChannel(actions.calls)
    old = int(NOW.timestamp()) - 5
    agent.handle(_cmd("c2", "restart-service", expires=old, unit="a.service"), channel)  # type: ignore[arg-type]
    assert actions.calls == ["send c2"]
    assert channel.sent[0]["ok"] is False and "expired" in channel.sent[0]["output"]


def test_an_unsupported_or_failing_command_reports_failure(tmp_path: Path) -> None:
    agent, actions = _agent(tmp_path)
    channel = SentChannel(actions.calls)
    agent.handle(_cmd("c3", "attest"), channel)  # type: ignore[arg-type]
    agent.handle(_cmd("c4", "format-disk"), channel)  # type: ignore[arg-type]
    assert [m["ok"] for m in channel.sent] == [False, False]
    assert "attestation source" in channel.sent[0]["output"]
    assert "unknown command" in channel.sent[1]["output"]


class ScriptedChannel(SentChannel):
    """Answers each ``receive`` from a script; ``None`` is a wait that timed out. Records
    the timeouts the agent asked for."""

    def __init__(self, script: list[dict[str, Any] | None]) -> None:
        super().__init__([])
        self.script = script
        self.timeouts: list[float] = []

    def receive(self, timeout: float) -> dict[str, Any] | None:
        self.timeouts.append(timeout)
        return self.script.pop(0) if self.script else None


def test_once_waits_for_the_servers_synced_before_giving_up(tmp_path: Path) -> None:
    """A loaded server may take longer than ``once_wait_seconds`` to send what was queued:
    ``--once`` waits up to ``once_sync_seconds`` for ``synced``, then only the short wait."""
    agent, _ = _agent(tmp_path)
    ping = {"type": "pong"}  # any other message does not count as synced
    channel = ScriptedChannel([ping, _cmd("c5", "collect-logs"), {"type": "synced"}, None])
    assert agent.serve(channel, once=True) == 1  # type: ignore[arg-type]
    o = agent.options
    assert channel.timeouts == [o.once_sync_seconds] * 3 + [o.once_wait_seconds]
    assert o.once_sync_seconds > o.once_wait_seconds
    # a server that never says synced: the long bound, then give up with what came
    agent2, _ = _agent(tmp_path / "b")
    quiet = ScriptedChannel([None])
    assert agent2.serve(quiet, once=True) == 0  # type: ignore[arg-type]
    assert quiet.timeouts == [o.once_sync_seconds]
