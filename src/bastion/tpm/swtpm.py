"""Start and stop a private swtpm: for tests, the demo and developers.

``Swtpm.start(state_dir)`` runs ``swtpm socket --tpm2`` as a direct child process on
two adjacent free TCP ports chosen at run time (server P and control P+1, as libtss2's
swtpm TCTI expects, both bound to 127.0.0.1),
with an absolute ``--tpmstate dir=`` and ``--pid file=`` (swtpm changes its folder to
``/``, and a relative state path sends the TPM into failure mode on its first write).
``start`` returns only once the pid file names the live child and both ports accept
connections; if a port was taken between choosing and binding, it retries with new
ports. ``stop()`` ends the process by its PID and reaps it; ``restart()`` is a power
cycle (same state folder: PCRs reset, NV kept), reusing the ports when it can.
``save_volatile()`` keeps the PCRs in the state folder and ``start(resume=True)``
brings them back: a sim device's TPM stays "on" between its boot and later commands.

swtpm is not run with ``-d``: a daemonised swtpm is re-parented to PID 1, which on
some machines does not reap it, leaving zombies. A child we ``wait()`` for cannot.
No ``swtpm_setup`` is needed: ``--flags not-need-init,startup-clear`` yields a
manufactured, started TPM (without an EK certificate; the EK comes from its template).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from bastion.errors import BackendError
from bastion.io.runner import CommandRunner

_START_TIMEOUT = 5.0  # seconds for swtpm to write its pid file and bind both ports
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 5
HOST = "127.0.0.1"
VOLATILE_FILE = "tpm2-00.volatilestate"  # where CMD_STORE_VOLATILE writes
_CMD_STORE_VOLATILE = 10  # swtpm control channel command (swtpm_ioctl -v)


def free_port_pair(attempts: int = 50) -> tuple[int, int]:
    """Two adjacent free TCP ports ``(P, P+1)`` on 127.0.0.1.

    libtss2's swtpm TCTI always talks to the control channel on the server port + 1.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind((HOST, 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind((HOST, port + 1))
                except OSError:
                    continue
                return port, port + 1
    raise BackendError("no two adjacent free TCP ports found on 127.0.0.1")


def port_accepts(port: int, host: str = HOST) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (signal 0 succeeds)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Swtpm:
    """One private swtpm process: its state folder, ports and PID.

    Use ``Swtpm.start(path)`` (or ``with Swtpm.start(path) as tpm:``); ``uri`` is the
    spelling :func:`bastion.tpm.uri.open_tpm` and ``TPM2TOOLS_TCTI`` accept.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        runner: CommandRunner | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.runner = runner or CommandRunner()
        self.port = 0
        self.ctrl_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._resume = False

    # --- lifecycle ---------------------------------------------------------------------
    @classmethod
    def start(
        cls, state_dir: Path, *, runner: CommandRunner | None = None, resume: bool = False
    ) -> Swtpm:
        """Start a swtpm keeping its state in ``state_dir`` (created if missing).

        By default the TPM powers on fresh (TPM2_Startup(CLEAR): PCRs reset). With
        ``resume``, it carries on from the volatile state :meth:`save_volatile` kept
        (PCRs as the last boot left them): how a sim device's TPM stays "powered"
        between the boot and later commands (provision, eventlog --check).
        """
        tpm = cls(state_dir, runner=runner)
        tpm._resume = resume
        tpm._launch(reuse_ports=False)
        return tpm

    def save_volatile(self) -> None:
        """Have swtpm write its volatile state (PCRs, sessions) into the state folder
        (control command CMD_STORE_VOLATILE), for a later ``start(resume=True)``."""
        if not self.running:
            raise BackendError(f"swtpm for {self.state_dir} is not running")
        try:
            with socket.create_connection((HOST, self.ctrl_port), timeout=_STOP_TIMEOUT) as ctrl:
                ctrl.sendall(_CMD_STORE_VOLATILE.to_bytes(4, "big"))
                answer = b""
                while len(answer) < 4:
                    chunk = ctrl.recv(4 - len(answer))
                    if not chunk:
                        break
                    answer += chunk
        except OSError as exc:
            raise BackendError(f"swtpm control channel {self.ctrl_port}: {exc}") from exc
        if len(answer) != 4 or int.from_bytes(answer, "big") != 0:
            raise BackendError(
                f"swtpm did not store its volatile state (answer {answer.hex() or 'none'})"
            )

    @property
    def pid(self) -> int:
        """PID of the running swtpm (BackendError when stopped)."""
        if self._proc is None:
            raise BackendError(f"swtpm for {self.state_dir} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the swtpm child is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def uri(self) -> str:
        """The TPM URI / TCTI string: ``swtpm:host=127.0.0.1,port=N``."""
        return f"swtpm:host={HOST},port={self.port}"

    @property
    def pid_file(self) -> Path:
        """Where swtpm writes its PID."""
        return self.state_dir / "swtpm.pid"

    @property
    def log_file(self) -> Path:
        """swtpm's own log (level 1)."""
        return self.state_dir / "swtpm.log"

    def stop(self) -> None:
        """Stop swtpm by its PID (SIGTERM, then SIGKILL) and reap it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=_STOP_TIMEOUT)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def restart(self) -> None:
        """Power-cycle: stop and start again on the same state (PCRs reset, NV kept)."""
        self.stop()
        self._resume = False
        self._launch(reuse_ports=True)

    def __enter__(self) -> Swtpm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self._proc else "stopped"
        return f"Swtpm({self.uri!r}, {state}, state_dir={str(self.state_dir)!r})"

    # --- internals -------------------------------------------------------------------
    def _argv(self) -> list[str]:
        return [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={self.state_dir}",
            "--server",
            f"type=tcp,port={self.port},bindaddr={HOST}",
            "--ctrl",
            f"type=tcp,port={self.ctrl_port},bindaddr={HOST}",
            "--flags",
            "not-need-init" if self._resume else "not-need-init,startup-clear",
            "--pid",
            f"file={self.pid_file}",
            "--log",
            f"file={self.log_file},level=1",
        ]

    def _launch(self, *, reuse_ports: bool) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._resume:  # a fresh power-on: no saved PCRs may come back
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / VOLATILE_FILE).unlink()
        last = "no attempt"
        for attempt in range(_PORT_ATTEMPTS):
            if not (reuse_ports and attempt == 0 and self.port):
                self.port, self.ctrl_port = free_port_pair()
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
            proc = self.runner.spawn(self._argv(), cwd=str(self.state_dir))
            outcome = self._wait_ready(proc)
            if outcome is None:
                self._proc = proc
                return
            last = outcome
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT)
        raise BackendError(
            f"swtpm did not start for {self.state_dir} after {_PORT_ATTEMPTS} attempts: "
            f"{last} (see {self.log_file})"
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> str | None:
        """None once swtpm serves; otherwise why it did not within the timeout."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                return f"swtpm exited with {code} (port {self.port}/{self.ctrl_port} taken?)"
            if (
                self._pid_file_names(proc.pid)
                and pid_alive(proc.pid)
                and port_accepts(self.port)
                and port_accepts(self.ctrl_port)
            ):
                return None
            time.sleep(0.01)
        return f"swtpm did not bind ports {self.port}/{self.ctrl_port} within {_START_TIMEOUT} s"

    def _pid_file_names(self, pid: int) -> bool:
        try:
            text = self.pid_file.read_text(encoding="ascii").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return False
        return text == str(pid)
