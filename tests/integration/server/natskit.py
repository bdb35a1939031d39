"""A real nats-server for one test: loopback, free ports chosen at run time, stopped by PID.

``NatsServer(folder)`` starts ``/usr/sbin/nats-server -a 127.0.0.1 -p PORT`` (Debian
package ``nats-server``) with its monitoring endpoint on a second loopback port (``/connz``
shows each connection's subjects). ``restart()`` stops it and starts it again on the same
port, as an operator restarting the local NATS would. Without the binary the test fails
under ``CI=true`` and is skipped by name elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_nats_server() -> None:
    """Fail (CI) or skip (elsewhere) when nats-server is not installed."""
    if not Path(NATS_SERVER).is_file():
        message = f"nats-server not found at {NATS_SERVER} (Debian package 'nats-server')"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


class NatsServer:
    """One nats-server process on fixed loopback ports for the life of a test."""

    def __init__(self, folder: Path) -> None:
        require_nats_server()
        self.folder = folder.resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.monitor_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.starts += 1
        log = (self.folder / f"nats-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                NATS_SERVER,
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
                "--pid",
                str(self.folder / "nats.pid"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4096).startswith(b"INFO "):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nats-server never answered")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("*.log")))

    def connections(self) -> list[dict[str, Any]]:
        """The server's client connections with their subscriptions (``/connz?subs=1``)."""
        url = f"http://127.0.0.1:{self.monitor_port}/connz?subs=1"
        with urllib.request.urlopen(url, timeout=5) as answer:
            body: dict[str, Any] = json.loads(answer.read())
        return list(body.get("connections") or [])

    def subjects(self) -> list[str]:
        """Every subscribed subject, over all connections (sorted, repeats kept)."""
        return sorted(s for c in self.connections() for s in c.get("subscriptions_list") or [])
