"""A QEMU guest where Debian's RAUC installs bastion bundles (issue 12, ADR 0040).

The host kernel has no device-mapper, and ``rauc install`` of a ``verity`` bundle needs
one: RAUC puts the bundle on a loop device, opens dm-verity over it with the root hash
from the signed manifest, and mounts the squashfs it exposes. So the install runs in a
guest: the host's Debian kernel booted directly (``-kernel``/``-initrd``, SeaBIOS: no
Secure Boot, no TPM, no disk image to build), with an initramfs made by
:func:`bastion.build.initrd.initrd_entries` from

* busybox, ``rauc`` and ``dbus-daemon`` with every library ``ldd`` names. Debian builds
  RAUC with its D-Bus service: ``rauc install`` and ``rauc status`` ask ``rauc service``
  over D-Bus, so the guest runs a private bus (:data:`BUS_CONF`, the session bus type
  RAUC picks with ``DBUS_STARTER_BUS_TYPE=session``);
* the modules for virtio disks, loop, dm-verity and squashfs;
* ``/etc/rauc/system.conf`` (:func:`system_conf`: ``bootloader=noop``, the compatible,
  the keyring, raw slots on virtio disks found by their QEMU serial) and
  ``/etc/rauc/keyring.pem``; the kernel command line says ``rauc.slot=<bootname>``, the
  slot RAUC takes as booted (RAUC's ``src/context.c``), so it installs into the other;
* the bundles under ``/bundles`` and the steps to run (``info NAME``/``install NAME``);
* ``/init`` (``tests/raucguest-init.sh``), which runs each step and frames its output
  on the serial console; :func:`parse_console` reads it back.

The slot disks are host files attached writable: after the power-off the test reads
what RAUC wrote. One boot holds the machine-wide QEMU lock of ``tests/e2e/conftest.py``;
QEMU is stopped by its PID whatever happens.
"""

from __future__ import annotations

import fcntl
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bastion.build import initrd
from bastion.errors import BackendError, ConfigError
from bastion.formats.cpio import archive
from bastion.io.qemu import stop_process
from bastion.io.runner import CommandRunner

INIT_SCRIPT = Path(__file__).with_name("raucguest-init.sh")
#: what the guest loads (their dependencies come from modules.dep)
MODULES = ("virtio_pci", "virtio_blk", "loop", "dm_mod", "dm_verity", "squashfs")
PROGRAMS = ("rauc", "dbus-daemon")
KEYRING = "/etc/rauc/keyring.pem"
#: where RAUC keeps its central slot status (a tmpfs: nothing outlives the boot)
DATA_DIRECTORY = "/run/rauc"
#: the private bus; its address is in the init's DBUS_SESSION_BUS_ADDRESS
BUS_CONF = b"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=/run/raucguest-bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""
_PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"
_GROUP = b"root:x:0:\n"
_BEGIN = re.compile(r"^RAUCGUEST: begin (\S+)\r?$")
_END = re.compile(r"^RAUCGUEST: end (\S+) rc=(\d+)\r?$")
_FAILED = re.compile(r"^RAUCGUEST: failed: (.*?)\r?$", re.M)
_DONE = re.compile(r"^RAUCGUEST: done\r?$", re.M)
_PANIC = re.compile(r"Kernel panic - not syncing: [^\r\n]*")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
_SERIAL_MAX = 20  # virtio-blk serials are 20 bytes
_POLL = 0.2
_POWEROFF_GRACE = 15.0


@dataclass(frozen=True, slots=True)
class Slot:
    """A RAUC slot on its own virtio disk: ``name`` as ``<class>.<index>``."""

    name: str
    disk: Path
    bootname: str | None = None
    parent: str | None = None

    @property
    def serial(self) -> str:
        """The disk's QEMU serial, and its name under /dev/raucguest in the guest."""
        serial = "slot-" + self.name.replace(".", "-")
        if len(serial) > _SERIAL_MAX or not _NAME.match(serial):
            raise ConfigError(f"slot name {self.name!r} makes no virtio serial")
        return serial

    @property
    def device(self) -> str:
        return f"/dev/raucguest/{self.serial}"


def system_conf(compatible: str, slots: Sequence[Slot]) -> bytes:
    """``/etc/rauc/system.conf``: noop boot loader, one raw slot per disk.

    RAUC 1.8 reads it with GLib's key file parser (docs/reference.rst "System
    Configuration File"); values are written as they are, so they may not hold a
    newline.
    """
    values = [compatible] + [s.name for s in slots]
    values += [s.bootname or "" for s in slots] + [s.parent or "" for s in slots]
    if any("\n" in v or "\r" in v for v in values):
        raise ConfigError("system.conf values may not hold a line break")
    lines = [
        "[system]",
        f"compatible={compatible}",
        "bootloader=noop",
        f"data-directory={DATA_DIRECTORY}",
        "",
        "[keyring]",
        f"path={KEYRING}",
    ]
    for slot in slots:
        lines += ["", f"[slot.{slot.name}]", f"device={slot.device}", "type=raw"]
        if slot.bootname:
            lines.append(f"bootname={slot.bootname}")
        if slot.parent:
            lines.append(f"parent={slot.parent}")
    return ("\n".join(lines) + "\n").encode()


def guest_initrd(
    kernel_release: str,
    *,
    config: bytes,
    keyring: bytes,
    bundles: dict[str, bytes],
    steps: Sequence[tuple[str, str]],
    slots: Sequence[Slot],
    runner: CommandRunner | None = None,
) -> bytes:
    """The guest's gzip initramfs (see the module docstring); ``config`` is the
    ``system.conf`` (:func:`system_conf`), ``keyring`` the PEM certificates RAUC trusts.

    ``bundles`` maps a name to the bundle's bytes (``/bundles/<name>.raucb``, root's,
    mode 0644: RAUC refuses a bundle others could write); ``steps`` are ``("info",
    name)`` or ``("install", name)`` pairs, run in order.
    """
    for verb, name in steps:
        if verb not in ("info", "install") or name not in bundles:
            raise ConfigError(f"step {verb} {name}: expected info|install of a bundle given")
    for name in bundles:
        if not _NAME.match(name):
            raise ConfigError(f"bundle name {name!r}: lower-case letters, digits and '-'")
    files = {
        "etc/rauc/system.conf": config,
        KEYRING.lstrip("/"): keyring,
        "etc/raucguest/bus.conf": BUS_CONF,
        "etc/raucguest/disks": "".join(f"{s.serial}\n" for s in slots).encode(),
        "etc/raucguest/steps": "".join(f"{v} {n}\n" for v, n in steps).encode(),
        "etc/passwd": _PASSWD,
        "etc/group": _GROUP,
    }
    files.update({f"bundles/{name}.raucb": data for name, data in bundles.items()})
    spec = initrd.InitrdSpec(
        kernel_release,
        modules=MODULES,
        programs=PROGRAMS,
        libraries=(),
        init=INIT_SCRIPT.read_bytes(),
        extra_files=files,
    )
    runner = runner or CommandRunner()
    return initrd.compress(archive(initrd.initrd_entries(spec, runner)), "gzip", runner)


@dataclass(frozen=True, slots=True)
class Step:
    """One framed step of the guest's console: its output and exit code."""

    name: str
    rc: int
    output: str


@dataclass(frozen=True, slots=True)
class GuestRun:
    """What one boot of the guest said and how it ended."""

    console: str
    steps: dict[str, Step]
    done: bool  # the guest ran every step and synced its disks
    failed: str | None  # the guest's own "failed:" reason
    panic: str | None
    seconds: float
    qemu_exit: int | None  # None when the host had to stop QEMU

    def step(self, name: str) -> Step:
        """The step ``name``; AssertionError with the console's tail when it did not run."""
        if name not in self.steps:
            raise AssertionError(
                f"the guest ran no step {name!r} (failed: {self.failed}, panic: "
                f"{self.panic}); console tail:\n{self.console[-4000:]}"
            )
        return self.steps[name]


def parse_console(text: str) -> dict[str, Step]:
    """The framed steps in the console ``text``; a step begun twice, ended without a
    begin, or begun inside another is a ConfigError (the framing is broken)."""
    steps: dict[str, Step] = {}
    current: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        begin, end = _BEGIN.match(line), _END.match(line)
        if begin:
            if current is not None or begin.group(1) in steps:
                raise ConfigError(f"console: step {begin.group(1)} begins out of order")
            current, lines = begin.group(1), []
        elif end:
            if end.group(1) != current:
                raise ConfigError(f"console: step {end.group(1)} ends without its begin")
            steps[current] = Step(current, int(end.group(2)), "\n".join(lines))
            current = None
        elif current is not None:
            lines.append(line.rstrip("\r"))
    return steps


def qemu_argv(
    kernel: Path,
    initrd_path: Path,
    serial: Path,
    slots: Sequence[Slot],
    cmdline: str,
    *,
    memory_mib: int = 768,
) -> list[str]:
    """Direct kernel boot under TCG, serial console to a file, one writable virtio
    disk per slot (raw, no snapshot: RAUC's writes land in the host file)."""
    argv = [
        "qemu-system-x86_64",
        "-machine", "pc,accel=tcg",
        "-cpu", "max",
        "-m", str(memory_mib),
        "-smp", "1",
        "-nodefaults", "-no-reboot",
        "-display", "none", "-monitor", "none", "-net", "none",
        "-chardev", f"file,id=serial0,path={serial}",
        "-serial", "chardev:serial0",
        "-kernel", str(kernel),
        "-initrd", str(initrd_path),
        "-append", cmdline,
    ]  # fmt: skip
    for n, slot in enumerate(slots):
        path = str(slot.disk.resolve())
        if "," in path:
            raise ConfigError(f"QEMU cannot take the path {path!r}: it contains a comma")
        argv += [
            "-drive", f"if=none,id=slot{n},file={path},format=raw",
            "-device", f"virtio-blk-pci,drive=slot{n},serial={slot.serial}",
        ]  # fmt: skip
    return argv


def boot_guest(
    kernel: Path,
    initrd_bytes: bytes,
    slots: Sequence[Slot],
    work: Path,
    *,
    booted: str,
    lock_file: Path,
    timeout: float,
    runner: CommandRunner | None = None,
) -> GuestRun:
    """Boot the guest once under the QEMU lock, with ``rauc.slot=<booted>``; wait for
    its "done" (or a failure, a panic, QEMU's exit, the time limit), then for its
    power-off; stop QEMU by its PID."""
    runner = runner or CommandRunner()
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    initrd_path, serial, log = work / "initrd.gz", work / "serial.log", work / "qemu.log"
    initrd_path.write_bytes(initrd_bytes)
    cmdline = f"console=ttyS0 rauc.slot={booted} panic=-1 loglevel=4"
    argv = qemu_argv(kernel, initrd_path, serial, slots, cmdline)
    with open(lock_file, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            return _run(runner, argv, work, serial, log, timeout)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _run(
    runner: CommandRunner, argv: list[str], work: Path, serial: Path, log: Path, timeout: float
) -> GuestRun:
    start = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    try:
        proc = runner.spawn(argv, cwd=str(work), output=str(log))
        grace_end: float | None = None
        while proc.poll() is None:
            text = _read(serial)
            now = time.monotonic()
            ended = _DONE.search(text) or _FAILED.search(text) or _PANIC.search(text)
            if ended and grace_end is None:
                grace_end = now + _POWEROFF_GRACE
            if (grace_end is not None and now >= grace_end) or now - start >= timeout:
                break
            time.sleep(_POLL)
    finally:
        if proc is not None:
            exit_code = stop_process(proc)
    text = _read(serial)
    if not text and exit_code not in (None, 0):
        raise BackendError(f"QEMU exited with {exit_code}: {_read(log)[-2000:]}")
    failed = _FAILED.search(text)
    panic = _PANIC.search(text)
    return GuestRun(
        console=text,
        steps=parse_console(text),
        done=_DONE.search(text) is not None,
        failed=failed.group(1) if failed else None,
        panic=panic.group(0) if panic else None,
        seconds=time.monotonic() - start,
        qemu_exit=exit_code,
    )
