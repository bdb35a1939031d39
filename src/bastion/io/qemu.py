"""Boot a disk image in QEMU with OVMF (UEFI, Secure Boot capable) and a private swtpm.

One :func:`boot` is one power-on of a fresh machine, in its own work folder:

* per-run copies of the OVMF code and variable store (the firmware writes its variables;
  a vars file with PK/KEK/db enrolled turns Secure Boot on; Debian's
  ``OVMF_CODE_4M.secboot.fd`` + ``OVMF_VARS_4M.fd`` are the default: Secure Boot
  capable firmware with no keys enrolled, so Secure Boot is off);
* a swtpm for this boot (``swtpm_setup --pcr-banks sha256`` then ``swtpm socket --tpm2``
  on a Unix control socket, which QEMU's ``tpm-emulator`` backend needs); a fresh TPM
  state each boot unless the caller hands one in;
* QEMU (``q35``, SMM on, secure pflash, TCG unless told otherwise, no network, the disk
  as virtio-blk with ``snapshot=on`` so the image file is never written, unless
  ``VmConfig.writable``: then the guest's writes, e.g. systemd-boot's boot-counter
  renames on the ESP, stay in the file for the next boot), serial console to a file;
* a watch loop over that file: bastion's markers, the firmware's ``Access Denied``, a
  kernel panic; a hard time limit. When the guest has said how it ended, the loop gives
  it a few seconds to power off, then stops QEMU.

Every process started here is stopped by its PID (SIGTERM, then SIGKILL) and reaped,
whatever happens. What the console said is decided by :mod:`bastion.formats.bootlog`;
this module only runs and watches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bastion.errors import BackendError, ConfigError
from bastion.formats import bootlog
from bastion.formats.bootlog import ConsoleReport, Outcome
from bastion.io.runner import CommandRunner
from bastion.limits import BOOTLOG_MAX_SIZE

OVMF_DIR = Path("/usr/share/OVMF")
DEFAULT_CODE = OVMF_DIR / "OVMF_CODE_4M.secboot.fd"
DEFAULT_VARS = OVMF_DIR / "OVMF_VARS_4M.fd"
DEFAULT_TIMEOUT = 240.0
POWEROFF_GRACE = 15.0  # seconds a guest gets to power off after its last marker
_POLL = 0.2
_STOP_TIMEOUT = 5.0
_SOCKET_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class VmConfig:
    """The machine: firmware, memory, accelerator, limits."""

    code: Path = DEFAULT_CODE
    vars: Path = DEFAULT_VARS
    memory_mib: int = 1024
    accel: str = "tcg"
    timeout: float = DEFAULT_TIMEOUT
    tpm: bool = True
    qemu: str = "qemu-system-x86_64"
    extra_args: tuple[str, ...] = ()
    writable: bool = False  # the guest writes the disk file (no snapshot=on)

    def check(self) -> None:
        for path, what in ((self.code, "OVMF code"), (self.vars, "OVMF variable store")):
            if not path.is_file():
                raise ConfigError(f"{what} {path} is missing (install ovmf)")
        if self.accel not in ("tcg", "kvm"):
            raise ConfigError(f"accelerator {self.accel!r}: expected tcg or kvm")
        if not 256 <= self.memory_mib <= 65536:
            raise ConfigError(f"memory {self.memory_mib} MiB out of 256..65536")
        if self.timeout <= 0:
            raise ConfigError(f"timeout {self.timeout} s must be positive")


@dataclass(frozen=True, slots=True)
class BootResult:
    """How one boot went."""

    outcome: Outcome
    reason: str
    seconds: float  # QEMU start to the end of the run
    outcome_seconds: float | None  # QEMU start to the guest's running/failed marker
    serial_log: Path
    report: ConsoleReport
    qemu_exit: int | None  # None when bastion had to stop QEMU
    work_dir: Path
    argv: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {
            "outcome": str(self.outcome),
            "reason": self.reason,
            "seconds": round(self.seconds, 2),
            "outcome_seconds": None
            if self.outcome_seconds is None
            else round(self.outcome_seconds, 2),
            "serial_log": str(self.serial_log),
            "root_mount": self.report.root_mount,
            "root_read_only": self.report.root_read_only,
            "eventlog_bytes": None if self.report.eventlog is None else len(self.report.eventlog),
            "pcrs": {
                bank: {str(n): v.hex() for n, v in sorted(values.items())}
                for bank, values in self.report.pcrs.items()
            },
            "efivars": dict(self.report.efivars),
            "qemu_exit": self.qemu_exit,
        }


def _no_commas(path: Path) -> str:
    text = str(path)
    if "," in text:
        raise ConfigError(f"QEMU cannot take the path {text!r}: it contains a comma")
    return text


def stop_process(proc: subprocess.Popen[bytes]) -> int | None:
    """Stop ``proc`` by its PID (SIGTERM, then SIGKILL) and reap it; its exit code or None
    when it had to be signalled."""
    code = proc.poll()
    if code is not None:
        return code
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=_STOP_TIMEOUT)
    return None


def setup_tpm_state(state_dir: Path, runner: CommandRunner | None = None) -> Path:
    """Make ``state_dir`` a manufactured TPM 2.0 (sha256 PCR bank only) unless it already is.

    The state a boot uses: hand the same folder to :func:`boot` (``tpm_state=``) after
    sealing to it on the host (a data volume's TPM token), and the guest sees that TPM.
    """
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (state_dir / "tpm2-00.permall").exists():
        (runner or CommandRunner()).run(
            [
                "swtpm_setup",
                "--tpm2",
                "--tpmstate",
                str(state_dir),
                "--pcr-banks",
                "sha256",
                "--overwrite",
            ]
        )
    return state_dir


class EmulatorTpm:
    """A swtpm for one QEMU boot: control channel on a Unix socket, stopped by PID."""

    def __init__(self, state_dir: Path, runner: CommandRunner) -> None:
        self.state_dir = state_dir.resolve()
        self.runner = runner
        self._sock_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        """The control socket QEMU connects to (BackendError before ``start``)."""
        if self._sock_dir is None:
            raise BackendError("the swtpm for this boot is not started")
        return self._sock_dir / "ctrl.sock"

    def start(self) -> None:
        """Set up the TPM state if new (sha256 bank only), start swtpm, wait for its socket."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Unix socket paths are limited to 107 bytes: keep it in a short private folder
        self._sock_dir = Path(tempfile.mkdtemp(prefix="bastion-tpm-"))
        setup_tpm_state(self.state_dir, self.runner)
        self._proc = self.runner.spawn(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={self.state_dir}",
                "--ctrl",
                f"type=unixio,path={self.socket}",
                "--pid",
                f"file={self.state_dir / 'swtpm.pid'}",
                "--log",
                f"file={self.state_dir / 'swtpm.log'},level=1",
            ],
            cwd=str(self.state_dir),
        )
        deadline = time.monotonic() + _SOCKET_WAIT
        while not self.socket.is_socket():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BackendError(
                    f"swtpm did not open {self.socket} (see {self.state_dir / 'swtpm.log'})"
                )
            time.sleep(0.02)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        """Stop swtpm by its PID and reap it; remove the socket folder. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        sock_dir, self._sock_dir = self._sock_dir, None
        if sock_dir is not None:
            shutil.rmtree(sock_dir, ignore_errors=True)


def qemu_argv(
    config: VmConfig,
    disk: Path,
    *,
    code: Path,
    vars_: Path,
    serial: Path,
    tpm_socket: Path | None,
) -> list[str]:
    """The QEMU command line for one boot."""
    argv = [
        config.qemu,
        "-machine",
        f"q35,smm=on,accel={config.accel}",
        "-cpu",
        "max" if config.accel == "tcg" else "host",
        "-m",
        str(config.memory_mib),
        "-smp",
        "1",
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-global",
        "ICH9-LPC.disable_s3=1",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-net",
        "none",
        "-chardev",
        f"file,id=serial0,path={_no_commas(serial)}",
        "-serial",
        "chardev:serial0",
        "-drive",
        f"if=pflash,format=raw,unit=0,file={_no_commas(code)},readonly=on",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={_no_commas(vars_)}",
        "-drive",
        f"if=none,id=disk0,file={_no_commas(disk)},format=raw"
        + ("" if config.writable else ",snapshot=on"),
        "-device",
        "virtio-blk-pci,drive=disk0,bootindex=1",
    ]
    if tpm_socket is not None:
        argv += [
            "-chardev",
            f"socket,id=chrtpm,path={_no_commas(tpm_socket)}",
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-tis,tpmdev=tpm0",
        ]
    return argv + list(config.extra_args)


class _SerialTail:
    """Reads what the guest appended to the serial log since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.text = ""

    def poll(self) -> str:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(BOOTLOG_MAX_SIZE - self.offset + 1)
        except FileNotFoundError:
            return self.text
        self.offset += len(chunk)
        if self.offset > BOOTLOG_MAX_SIZE:
            raise BackendError(f"serial log {self.path} grew past {BOOTLOG_MAX_SIZE} bytes")
        self.text += chunk.decode("utf-8", "replace")
        return self.text


def boot(
    disk: Path,
    work_dir: Path,
    config: VmConfig | None = None,
    *,
    tpm_state: Path | None = None,
    runner: CommandRunner | None = None,
) -> BootResult:
    """Power on a VM with ``disk``, watch it until it ends, stop everything; see above."""
    config = config or VmConfig()
    config.check()
    runner = runner or CommandRunner()
    disk = disk.resolve()
    if not disk.is_file():
        raise ConfigError(f"disk image {disk} is missing")
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    code, vars_ = work_dir / "OVMF_CODE.fd", work_dir / "OVMF_VARS.fd"
    shutil.copyfile(config.code, code)
    shutil.copyfile(config.vars, vars_)
    serial, qemu_log = work_dir / "serial.log", work_dir / "qemu.log"
    for path in (serial, qemu_log):
        path.unlink(missing_ok=True)
    tpm = EmulatorTpm(tpm_state or work_dir / "tpm", runner) if config.tpm else None
    proc: subprocess.Popen[bytes] | None = None
    tail = _SerialTail(serial)
    report = ConsoleReport()
    timed_out = False
    exit_code: int | None = None
    outcome_at: float | None = None
    argv: list[str] = []
    start = time.monotonic()
    try:
        if tpm is not None:
            tpm.start()
        argv = qemu_argv(
            config,
            disk,
            code=code,
            vars_=vars_,
            serial=serial,
            tpm_socket=tpm.socket if tpm else None,
        )
        start = time.monotonic()
        proc = runner.spawn(argv, cwd=str(work_dir), output=str(qemu_log))
        deadline = start + config.timeout
        grace_end: float | None = None
        while True:
            exited = proc.poll() is not None
            text = tail.poll()
            # whole lines only: the guest may be half-way through writing the last one
            report = bootlog.parse(text[: text.rfind("\n") + 1])
            now = time.monotonic()
            if report.finished and outcome_at is None:
                outcome_at = now - start
                grace_end = now + POWEROFF_GRACE
            if exited:
                break
            if report.firmware_refusal is not None and not report.finished:
                break  # OVMF waits forever after "Access Denied"
            if report.panic is not None and not report.finished:
                break
            if grace_end is not None and now >= grace_end:
                break
            if now >= deadline:
                timed_out = not report.finished
                break
            time.sleep(_POLL)
    finally:
        if proc is not None:
            exit_code = stop_process(proc)
        if tpm is not None:
            tpm.stop()
    seconds = time.monotonic() - start
    report = bootlog.parse(tail.poll())
    result = bootlog.outcome(report, timed_out=timed_out)
    why = bootlog.reason(report, result)
    if result is Outcome.EXITED and qemu_log.is_file():
        errors = qemu_log.read_text("utf-8", "replace").strip().splitlines()[-3:]
        if errors:
            why += "; qemu: " + " | ".join(errors)
    return BootResult(
        outcome=result,
        reason=why,
        seconds=seconds,
        outcome_seconds=outcome_at,
        serial_log=serial,
        report=report,
        qemu_exit=exit_code,
        work_dir=work_dir,
        argv=tuple(argv),
    )
