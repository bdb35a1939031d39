"""The agent loop: heartbeat, config sync, log shipping, the command channel, reconnect.

:class:`Agent` talks to the fleet server only outbound, through an
:class:`~bastion.io.http.HttpClient` whose every request is signed in the TPM
(:class:`~bastion.device.agent.signing.TpmRequestSigner`) and a WebSocket
(:mod:`bastion.io.websocket`) whose upgrade is signed the same way. One *cycle*:

1. ``POST /v1/device/heartbeat`` (agent version, OS version, slot, uptime, log backlog);
2. ``GET /v1/device/config`` -> ``DATA/config.json`` (the whole document) and
   ``DATA/env`` (systemd ``EnvironmentFile`` syntax) for the device's applications,
   each replaced atomically and only when it changed; a device refused for want of a
   fresh attestation keeps the files it has;
3. application spool files ``DATA/spool/*.log`` move into the offline buffer
   (:class:`~bastion.device.agent.logbuffer.LogBuffer`, ``DATA/logs``), then the buffer
   is shipped segment by segment (``POST /v1/device/logs``), each deleted only once the
   server took it.

Then it opens ``/v1/device/channel`` and serves commands, running a cycle every
``heartbeat_seconds``. Any transport or authentication failure closes the channel and
the agent retries after :func:`backoff_delay` (exponential, capped, with jitter), the
count reset by the next channel that opens. ``run(once=True)`` does one cycle, serves
the commands queued before the channel opened (the server sends ``{"type": "synced"}``
after them; waited for up to ``once_sync_seconds``) and those that arrive within
``once_wait_seconds`` after, and returns (scripts, tests); failures raise instead of
waiting.

Commands (ADR 0033) are run at most once per id: the result is written to
``DATA/done.json`` before it is sent, and a command that comes again (the result was
lost with the connection) gets the stored result back without running again. A command
past its ``expires_at`` by the device clock is answered as failed, not run. ``reboot``
and ``wipe`` answer first, then act. ``attest`` and ``rotate-key`` call the hooks the
caller gives (:func:`bastion.device.attest.attest`,
:func:`bastion.device.agent.rotate.rotate_identity`).

Updates (ADR 0038): with an :class:`~bastion.device.agent.updater.Updater`, the agent
settles the boot it runs in before anything else (health checks, commit or fall back,
the signed report; no network needed but for the report, which waits if it must), and
each cycle settles again, sends a report still pending and, every
``update_check_seconds`` of the fleet config (else ``AgentOptions.update_check_seconds``,
0: never), checks the fleet target against TUF and installs it, then reboots.
``check-update`` runs the same check now and answers before rebooting; without an
updater it runs the actions' update hook.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion import __version__, limits
from bastion.device.agent.actions import Actions
from bastion.device.agent.logbuffer import LogBuffer
from bastion.device.agent.updater import DEFAULT_INTERVAL_SECONDS, Updater, interval_of
from bastion.errors import (
    AttestationRequiredError,
    AuthError,
    BackendError,
    BastionError,
    FormatError,
    TransportError,
)
from bastion.formats import strict_json
from bastion.io.clock import Clock
from bastion.io.files import atomic_write, read_bounded
from bastion.io.http import HttpClient
from bastion.io.websocket import Channel

log = logging.getLogger(__name__)
CHANNEL_PATH = "/v1/device/channel"
CONFIG_FILE = "config.json"
ENV_FILE = "env"
DONE_FILE = "done.json"

#: opens the channel given the signed upgrade headers
ChannelOpener = Callable[[Mapping[str, str]], Channel]


def backoff_delay(attempt: int, rng: random.Random, base: float, cap: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): "equal jitter", i.e. half
    of ``min(cap, base * 2**attempt)`` plus a random part of the other half."""
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


def env_file(env: Mapping[str, str]) -> bytes:
    """``NAME="value"`` lines a systemd ``EnvironmentFile=`` reads back exactly."""
    lines = []
    for name in sorted(env):
        value = env[name].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'{name}="{value}"\n')
    return "".join(lines).encode()


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """Timings and what the heartbeat reports."""

    heartbeat_seconds: float = 60.0
    #: once: how long to wait for more after the server's ``synced`` (and each command)
    once_wait_seconds: float = 2.0
    #: once: how long to wait for the server's ``synced`` (a server before it: the bound)
    once_sync_seconds: float = 30.0
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = limits.AGENT_BACKOFF_MAX_SECONDS
    slot: str | None = None
    os_version: str | None = None
    #: the periodic update check unless the fleet config says (0: never)
    update_check_seconds: float = DEFAULT_INTERVAL_SECONDS


class Agent:
    """One device's agent (module docstring)."""

    def __init__(
        self,
        http: HttpClient,
        data_dir: Path,
        actions: Actions,
        open_channel: ChannelOpener,
        clock: Clock,
        *,
        options: AgentOptions | None = None,
        attest: Callable[[], Mapping[str, Any]] | None = None,
        on_wipe: Callable[[], None] | None = None,
        rotate: Callable[[], str] | None = None,
        updater: Updater | None = None,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if http.signer is None:
            raise AuthError("the agent signs every request in the TPM: give it a signed client")
        self.http = http
        self.data = data_dir
        self.actions = actions
        self._open_channel = open_channel
        self.clock = clock
        self.options = options or AgentOptions()
        self._attest = attest
        self._on_wipe = on_wipe
        self._rotate = rotate
        self.updater = updater
        self.fleet_config: dict[str, Any] | None = None
        self._stopping = threading.Event()
        self.sleep = sleep or self._stopping.wait
        self.rng = rng or random.Random()
        self.buffer = LogBuffer(data_dir / "logs")
        self.spool = data_dir / "spool"
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.started = clock.monotonic()

    def stop(self) -> None:
        """Ask a running :meth:`run` to return (from another thread or a signal handler)."""
        self._stopping.set()

    # --- the agent's own log ----------------------------------------------------------------

    def note(self, text: str) -> None:
        """Log ``text`` locally and queue it for the server."""
        log.info("%s", text)
        stamp = self.clock.now().isoformat(timespec="seconds")
        try:
            self.buffer.append([f"{stamp} bastion-agent: {text}"])
        except OSError as exc:  # the buffer keeps what it has; this line is only logged
            log.warning("log buffer: %s", exc)

    # --- one cycle --------------------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "agent_version": __version__,
            "uptime_seconds": int(self.clock.monotonic() - self.started),
            "log_backlog": self.buffer.size(),
        }
        if self.options.slot:
            body["slot"] = self.options.slot
        if self.options.os_version:
            body["os_version"] = self.options.os_version
        return self.http.call_object("POST", "/v1/device/heartbeat", body)

    def sync_config(self) -> bool:
        """Fetch the config and env; rewrite the files that changed. True if any did."""
        try:
            doc = self.http.call_object("GET", "/v1/device/config")
        except AttestationRequiredError as exc:
            self.note(f"config not refreshed (keeping the last one): {exc}")
            return False
        env = doc.get("env")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise FormatError("GET /v1/device/config: 'env' is not an object of strings")
        config = doc.get("config")
        self.fleet_config = config if isinstance(config, dict) else None
        files = {
            self.data / CONFIG_FILE: json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n",
            self.data / ENV_FILE: env_file(env),
        }
        changed = False
        for path, content in files.items():
            if len(content) > limits.AGENT_CONFIG_MAX_SIZE:
                raise FormatError(f"{path.name} would be over {limits.AGENT_CONFIG_MAX_SIZE} bytes")
            try:
                old = path.read_bytes()
            except FileNotFoundError:
                old = None
            if old != content:
                atomic_write(path, content, mode=0o644)
                changed = True
        if changed:
            self.note("config and environment updated")
        return changed

    def ingest_spool(self) -> int:
        """Move application spool files (``DATA/spool/*.log``) into the buffer."""
        moved = 0
        for path in sorted(self.spool.glob("*.log")):
            raw = read_bounded(path, limits.AGENT_SPOOL_FILE_MAX_SIZE, "log spool file")
            lines = raw.decode(errors="replace").splitlines()
            written = self.buffer.append(lines)
            if written < len(lines):
                break  # the disk is full: the file stays, its lines wait in memory too
            path.unlink()
            moved += written
        return moved

    def ship_logs(self, max_segments: int = 64) -> int:
        """Upload buffered lines, oldest first; lines the server took."""
        shipped = 0
        for _ in range(max_segments):
            found = self.buffer.peek()
            if found is None:
                break
            segment, lines = found
            if lines:
                self.http.call_object("POST", "/v1/device/logs", {"lines": lines})
            self.buffer.commit(segment)
            shipped += len(lines)
            if not lines and not self.buffer.segments():
                break
        return shipped

    def cycle(self) -> None:
        """Heartbeat, config, spool, logs. Server errors propagate (the caller backs off);
        a full or failing data volume only skips the step that needed it."""
        self.heartbeat()
        for step in (self.sync_config, self.ingest_spool, self.ship_logs):
            try:
                step()
            except OSError as exc:
                log.warning("agent %s: %s", step.__name__, exc)
        self.update_tick()

    # --- updates ----------------------------------------------------------------------------

    def settle_update(self) -> None:
        """After a boot: commit or fall back and report (module docstring); a failure is
        noted, never fatal (the next cycle settles again)."""
        if self.updater is None:
            return
        try:
            self.updater.settle()
        except (BastionError, OSError) as exc:
            self.note(f"update settle: {exc}")

    def update_tick(self) -> None:
        """The cycle's update part: settle, pending report, periodic check."""
        if self.updater is None:
            return
        try:
            interval = interval_of(self.fleet_config, self.options.update_check_seconds)
            self.updater.tick(self.clock.monotonic(), interval)
        except (BastionError, OSError) as exc:
            self.note(f"update: {exc}")

    # --- commands ---------------------------------------------------------------------------

    def _done(self) -> list[dict[str, Any]]:
        try:
            raw = read_bounded(self.data / DONE_FILE, limits.JSON_MAX_SIZE, "agent done list")
        except (FileNotFoundError, BastionError):
            return []
        try:
            data = strict_json.loads_object(raw, what=DONE_FILE)
        except FormatError:
            return []
        done = data.get("done")
        return [d for d in done if isinstance(d, dict)] if isinstance(done, list) else []

    def _remember(self, result: dict[str, Any]) -> None:
        done = [d for d in self._done() if d.get("id") != result["id"]] + [result]
        payload = {"done": done[-limits.AGENT_DONE_IDS_MAX :]}
        atomic_write(self.data / DONE_FILE, json.dumps(payload).encode(), mode=0o600)

    def _run(self, kind: str, args: Mapping[str, Any]) -> tuple[bool, str, Callable[[], None]]:
        """(ok, output, what to do after the result was sent)."""

        def nothing() -> None:
            return None

        if kind == "reboot":
            return True, "rebooting", self.actions.reboot
        if kind == "restart-service":
            return True, self.actions.restart_service(str(args.get("unit", ""))), nothing
        if kind == "check-update":
            if self.updater is not None:
                outcome = self.updater.update_now()
                return True, outcome.text, self.updater.reboot if outcome.reboot else nothing
            return True, self.actions.check_update() or "update check done", nothing
        if kind == "attest":
            if self._attest is None:
                raise BackendError("this agent has no attestation source configured")
            verdict = self._attest()
            ok = bool(verdict.get("ok"))
            ids = ",".join(str(f.get("id")) for f in verdict.get("failures", []) or [])
            return ok, "attestation passed" if ok else f"attestation failed: {ids}", nothing
        if kind == "collect-logs":
            lines = self.actions.collect_logs()
            self.buffer.append(lines)
            shipped = self.ingest_spool() + self.ship_logs()
            return True, f"collected {len(lines)} lines; shipped {shipped}", nothing
        if kind == "wipe":

            def wipe() -> None:
                if self._on_wipe is not None:
                    self._on_wipe()
                self.actions.wipe()

            return True, "wiping: the device will reprovision", wipe
        if kind == "rotate-key":
            if self._rotate is None:
                raise BackendError("this agent has no identity-key rotation configured")
            return True, self._rotate(), nothing
        raise FormatError(f"unknown command {kind!r}")

    def handle(self, message: Mapping[str, Any], channel: Channel) -> dict[str, Any]:
        """Run one ``command`` message (at most once per id) and send its result."""
        command_id = message.get("id")
        kind = message.get("kind")
        args = message.get("args") or {}
        expires = message.get("expires_at")
        if (
            not isinstance(command_id, str)
            or not isinstance(kind, str)
            or not isinstance(args, dict)
        ):
            raise FormatError("channel command without a string id and kind")
        for done in self._done():
            if done.get("id") == command_id:
                channel.send({"type": "result", **done})
                return done
        after: Callable[[], None] = lambda: None  # noqa: E731
        now = int(self.clock.now().timestamp())
        if isinstance(expires, int) and expires <= now:
            ok, output = False, f"expired {now - expires} s before it could run"
        else:
            try:
                ok, output, after = self._run(kind, args)
            except BastionError as exc:
                ok, output = False, str(exc)
        result = {"id": command_id, "ok": ok, "output": output[: limits.COMMAND_OUTPUT_MAX_SIZE]}
        try:
            self._remember(result)
        except OSError as exc:  # a full disk must not stop the result reaching the server
            log.warning("cannot record command %s as done: %s", command_id, exc)
        self.note(f"command {kind} {command_id}: {'ok' if ok else 'failed'}: {output[:200]}")
        channel.send({"type": "result", **result})
        after()
        return result

    # --- the loop ---------------------------------------------------------------------------

    def open_channel(self) -> Channel:
        signer = self.http.signer
        assert signer is not None
        headers = signer("GET", self.http.target(CHANNEL_PATH), b"")
        return self._open_channel(headers)

    def serve(self, channel: Channel, *, once: bool) -> int:
        """Answer commands until the channel fails (or, once, until it goes quiet)."""
        handled = 0
        next_cycle = self.clock.monotonic() + self.options.heartbeat_seconds
        synced = False  # once: the server said every command queued before is sent
        while not self._stopping.is_set():
            if once:
                timeout = (
                    self.options.once_wait_seconds if synced else self.options.once_sync_seconds
                )
            else:
                timeout = max(0.05, next_cycle - self.clock.monotonic())
            message = channel.receive(timeout)
            if message is None:
                if once:
                    return handled
                self.cycle()
                next_cycle = self.clock.monotonic() + self.options.heartbeat_seconds
                continue
            kind = message.get("type")
            if kind == "command":
                self.handle(message, channel)
                handled += 1
            elif kind == "synced":
                synced = True
        return handled

    def run(self, *, once: bool = False, max_attempts: int | None = None) -> int:
        """The agent's life (module docstring); commands handled (``once``)."""
        attempt = 0
        handled = 0
        self.settle_update()
        while not self._stopping.is_set():
            try:
                self.cycle()
                with self.open_channel() as channel:
                    attempt = 0
                    self.note("command channel open")
                    handled += self.serve(channel, once=once)
                self.ship_logs()
                if once or self._stopping.is_set():
                    return handled
            except (TransportError, AuthError, BackendError, OSError) as exc:
                if once or (max_attempts is not None and attempt + 1 >= max_attempts):
                    raise
                delay = backoff_delay(
                    attempt,
                    self.rng,
                    self.options.backoff_base_seconds,
                    self.options.backoff_max_seconds,
                )
                attempt += 1
                self.note(
                    f"server unreachable or refused ({exc}); retry {attempt} in {delay:.1f} s"
                )
                self.sleep(delay)
        return handled
