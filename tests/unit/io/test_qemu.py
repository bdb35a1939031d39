"""The QEMU runner: its command line, and its watch loop against a stand-in QEMU.

The stand-in is a shell script that writes a console transcript to the serial file QEMU
would write, then exits or hangs as a firmware would; the loop must classify it and stop
the process by its PID in every case. The real QEMU runs in tests/e2e.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.errors import BackendError, ConfigError
from bastion.formats.bootlog import Outcome
from bastion.io import qemu
from bastion.io.runner import CommandRunner

FAKE = """#!/bin/sh
serial=
while [ $# -gt 0 ]; do
  case "$1" in file,id=serial0,path=*) serial=${1#file,id=serial0,path=} ;; esac
  shift
done
echo $$ > "$(dirname "$serial")/fake.pid"
"""


def _config(tmp_path: Path, body: str, **kw: object) -> qemu.VmConfig:
    code, vars_ = tmp_path / "code.fd", tmp_path / "vars.fd"
    code.write_bytes(b"code")
    vars_.write_bytes(b"vars")
    script = tmp_path / "fake-qemu"
    script.write_text(FAKE + body)
    script.chmod(0o755)
    fields: dict[str, object] = {"code": code, "vars": vars_, "tpm": False, "qemu": str(script)}
    fields.update(kw)
    return qemu.VmConfig(**fields)  # type: ignore[arg-type]


def _disk(tmp_path: Path) -> Path:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    return disk


def _gone(pid_file: Path) -> bool:
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_argv(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(
        qemu.VmConfig(),
        tmp_path / "d.img",
        code=tmp_path / "c.fd",
        vars_=tmp_path / "v.fd",
        serial=tmp_path / "s.log",
        tpm_socket=tmp_path / "t.sock",
    )
    text = " ".join(argv)
    assert "q35,smm=on,accel=tcg" in text
    assert "driver=cfi.pflash01,property=secure,value=on" in text
    assert f"file={tmp_path / 'd.img'},format=raw,snapshot=on" in text
    assert f"file={tmp_path / 'c.fd'},readonly=on" in text
    assert "-net none" in text and "-no-reboot" in text
    assert "tpm-tis,tpmdev=tpm0" in text


def test_argv_writable_disk_has_no_snapshot(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(
        qemu.VmConfig(writable=True),
        tmp_path / "d.img",
        code=tmp_path / "c.fd",
        vars_=tmp_path / "v.fd",
        serial=tmp_path / "s.log",
        tpm_socket=None,
    )
    disk = next(a for a in argv if a.startswith("if=none,id=disk0,"))
    assert disk == f"if=none,id=disk0,file={tmp_path / 'd.img'},format=raw"


def test_argv_refuses_commas(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="comma"):
        qemu.qemu_argv(
            qemu.VmConfig(),
            tmp_path / "a,b.img",
            code=tmp_path / "c",
            vars_=tmp_path / "v",
            serial=tmp_path / "s",
            tpm_socket=None,
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [("accel", "hvf"), ("memory_mib", 16), ("timeout", 0.0), ("code", Path("/nonexistent"))],
)
def test_config_refusals(tmp_path: Path, field: str, value: object) -> None:
    config = _config(tmp_path, "", **{field: value})
    with pytest.raises(ConfigError):
        qemu.boot(_disk(tmp_path), tmp_path / "w", config)


def test_running_then_poweroff(tmp_path: Path) -> None:
    body = 'printf "BASTION: running\\nBASTION: poweroff\\n" > "$serial"\nexit 0\n'
    result = qemu.boot(_disk(tmp_path), tmp_path / "w", _config(tmp_path, body))
    assert result.outcome is Outcome.RUNNING and result.qemu_exit == 0
    assert result.serial_log.read_text().startswith("BASTION: running")
    # per-run copies of the firmware
    assert (tmp_path / "w" / "OVMF_VARS.fd").read_bytes() == b"vars"


def test_half_written_line_is_not_parsed_while_watching(tmp_path: Path) -> None:
    # the guest is caught half-way through a PCR line: the watch loop must wait for its end
    pcr = "3B" * 32
    body = (
        f'printf "BASTION: pcr sha256 13 {pcr[:3]}" > "$serial"\nsleep 1\n'
        f'printf "{pcr[3:]}\\nBASTION: running\\nBASTION: poweroff\\n" >> "$serial"\nexit 0\n'
    )
    result = qemu.boot(_disk(tmp_path), tmp_path / "w", _config(tmp_path, body))
    assert result.outcome is Outcome.RUNNING, result.reason
    assert result.report.pcrs["sha256"][13] == bytes.fromhex(pcr)


def test_access_denied_stops_a_hanging_firmware(tmp_path: Path) -> None:
    body = 'printf "BdsDxe: failed to load Boot0001: Access Denied\\n" > "$serial"\nexec sleep 60\n'
    started = time.monotonic()
    result = qemu.boot(_disk(tmp_path), tmp_path / "w", _config(tmp_path, body))
    assert result.outcome is Outcome.FIRMWARE_REFUSED
    assert result.qemu_exit is None  # bastion stopped it
    assert time.monotonic() - started < 10
    assert _gone(tmp_path / "w" / "fake.pid")


def test_guest_that_does_not_power_off_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "POWEROFF_GRACE", 0.5)
    body = 'printf "BASTION: failed: verity: bad block\\n" > "$serial"\nexec sleep 60\n'
    result = qemu.boot(_disk(tmp_path), tmp_path / "w", _config(tmp_path, body))
    assert result.outcome is Outcome.FAILED
    assert result.reason == "verity: bad block"
    assert _gone(tmp_path / "w" / "fake.pid")


def test_timeout(tmp_path: Path) -> None:
    body = 'printf "BASTION: initrd\\n" > "$serial"\nexec sleep 60\n'
    result = qemu.boot(_disk(tmp_path), tmp_path / "w", _config(tmp_path, body, timeout=1.0))
    assert result.outcome is Outcome.TIMEOUT
    assert "last: initrd" in result.reason
    assert _gone(tmp_path / "w" / "fake.pid")


def test_exit_without_outcome_reports_qemu_errors(tmp_path: Path) -> None:
    body = 'echo "qemu: could not open disk image" >&2\nexit 1\n'
    result = qemu.boot(_disk(tmp_path), tmp_path / "w", _config(tmp_path, body))
    assert result.outcome is Outcome.EXITED
    assert "could not open disk image" in result.reason
    assert result.qemu_exit == 1


def test_emulator_tpm_starts_and_stops_by_pid(tmp_path: Path) -> None:
    need_tool("swtpm")
    need_tool("swtpm_setup")
    tpm = qemu.EmulatorTpm(tmp_path / "tpm", CommandRunner())
    with pytest.raises(BackendError):
        _ = tpm.socket
    tpm.start()
    try:
        pid = tpm.pid
        assert pid is not None
        assert tpm.socket.is_socket() and len(str(tpm.socket)) < 100
        assert (tmp_path / "tpm" / "tpm2-00.permall").is_file()
        folder = tpm.socket.parent
    finally:
        tpm.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not folder.exists()
    tpm.stop()  # idempotent


def test_comma_path_leaves_nothing_running(tmp_path: Path) -> None:
    need_tool("swtpm")
    need_tool("swtpm_setup")
    bad = tmp_path / "a,b"
    bad.mkdir()
    disk = bad / "disk.img"
    disk.write_bytes(b"\0" * 512)
    before = set(Path(tempfile.gettempdir()).glob("bastion-tpm-*"))
    with pytest.raises(ConfigError, match="comma"):
        qemu.boot(disk, tmp_path / "w", _config(tmp_path, "exit 0\n", tpm=True))
    # the swtpm started for the boot was stopped and its socket folder removed
    assert set(Path(tempfile.gettempdir()).glob("bastion-tpm-*")) == before
    state = str(tmp_path / "w" / "tpm")
    assert not [p for p in _cmdlines() if state in p]


def _cmdlines() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return out
