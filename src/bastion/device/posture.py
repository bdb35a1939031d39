"""Posture collection: the facts of a running Linux system, read from /proc and /sys.

:func:`collect_posture` reads the kernel's files through a :class:`KernelFiles` (a
:class:`FileTree` rooted at ``/`` on a device, at a fake tree in tests), parses each
with :mod:`bastion.formats.kernelstate` and returns the posture dict that evidence
carries and :mod:`bastion.trust.posture` judges (docs/attestation.md, "Posture").

A fact that cannot be established (file missing, unreadable or malformed) is reported
as ``"unknown"``; a policy that requires it then fails (``posture.<fact>.unknown``).
A fact is given a definite "off" value only on positive evidence, e.g. SELinux is
``disabled`` when securityfs lists the active LSMs without it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bastion import limits
from bastion.errors import FormatError
from bastion.formats import kernelstate as ks
from bastion.trust.posture import UNKNOWN

#: runs ``dmsetup status NAME`` and returns its stdout, None when it cannot
DmStatus = Callable[[str], bytes | None]


class KernelFiles(Protocol):
    """Read-only access to a root file tree (paths are absolute, as on the device)."""

    def read(self, path: str, limit: int = limits.POSTURE_FILE_MAX_SIZE) -> bytes | None:
        """The file's bytes (at most ``limit + 1``), None if it cannot be read."""
        ...

    def listdir(self, path: str) -> list[str] | None:
        """The names in a folder, None if it is not a readable folder."""
        ...


class FileTree:
    """:class:`KernelFiles` under a root folder (``/`` on the device)."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    def _path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read(self, path: str, limit: int = limits.POSTURE_FILE_MAX_SIZE) -> bytes | None:
        try:
            with open(self._path(path), "rb") as handle:
                return handle.read(limit + 1)  # procfs files report size 0: read, don't stat
        except OSError:
            return None

    def listdir(self, path: str) -> list[str] | None:
        try:
            return sorted(os.listdir(self._path(path)))
        except OSError:
            return None


def _parse(
    files: KernelFiles,
    path: str,
    parse: Callable[[bytes], Any],
    limit: int = limits.POSTURE_FILE_MAX_SIZE,
) -> Any:
    raw = files.read(path, limit)
    if raw is None:
        return None
    try:
        return parse(raw)
    except FormatError:
        return None


def _selinux(files: KernelFiles, lsms: tuple[str, ...] | None) -> str:
    mode = _parse(files, "/sys/fs/selinux/enforce", ks.parse_selinux_enforce)
    if mode is not None:
        return str(mode)
    if lsms is not None and "selinux" not in lsms:
        return "disabled"
    sysfs = files.listdir("/sys/fs")
    if sysfs is not None and "selinux" not in sysfs:
        return "disabled"  # selinuxfs registers its mount point only when SELinux runs
    return UNKNOWN


def _lockdown(files: KernelFiles, lsms: tuple[str, ...] | None) -> str:
    level = _parse(files, "/sys/kernel/security/lockdown", ks.parse_lockdown)
    if level is not None:
        return str(level)
    if lsms is not None and "lockdown" not in lsms:
        return str(ks.Lockdown.NONE)
    return UNKNOWN


def _secure_boot(files: KernelFiles) -> bool | str:
    variable = f"/sys/firmware/efi/efivars/{ks.SECURE_BOOT_VARIABLE}"
    value = _parse(files, variable, ks.parse_secure_boot)
    if value is not None:
        return bool(value)
    efivars = files.listdir("/sys/firmware/efi/efivars")
    if efivars is not None and ks.SECURE_BOOT_VARIABLE not in efivars:
        return False  # UEFI without the variable: the firmware has no Secure Boot
    firmware = files.listdir("/sys/firmware")
    if firmware is not None and "efi" not in firmware:
        return False  # booted by a legacy BIOS
    return UNKNOWN


def _ports(files: KernelFiles) -> list[int] | str:
    byteorder: ks.ByteOrder = "little" if sys.byteorder == "little" else "big"
    sockets: list[ks.Socket] = []
    seen = 0
    for protocol in ("tcp", "tcp6", "udp", "udp6"):
        raw = files.read(f"/proc/net/{protocol}", limits.POSTURE_TABLE_MAX_SIZE)
        if raw is None:
            continue  # no IPv6 in this kernel, for example
        try:
            sockets += ks.parse_net_table(raw, protocol, byteorder)
        except FormatError:
            return UNKNOWN
        seen += 1
    ports = ks.listening_ports(tuple(sockets))
    if seen == 0 or len(ports) > limits.ATTEST_POSTURE_MAX_LIST:
        return UNKNOWN
    return list(ports)


def _verity(files: KernelFiles, dm_status: DmStatus | None) -> str:
    mounts = _parse(
        files, "/proc/self/mountinfo", ks.parse_mountinfo, limits.POSTURE_TABLE_MAX_SIZE
    )
    root = ks.root_mount(mounts) if mounts is not None else None
    if root is None:
        return UNKNOWN
    blocks = files.listdir("/sys/block")
    if blocks is None:
        return UNKNOWN
    dms = [b for b in blocks if b.startswith("dm-")][: limits.POSTURE_DM_DEVICES_MAX]
    for block in dms:
        number = _parse(files, f"/sys/block/{block}/dev", ks.parse_dev_number)
        if number != (root.major, root.minor):
            continue
        uuid = _parse(
            files, f"/sys/block/{block}/dm/uuid", lambda b: ks.parse_dm_attribute(b, "uuid")
        )
        name = _parse(
            files, f"/sys/block/{block}/dm/name", lambda b: ks.parse_dm_attribute(b, "name")
        )
        if uuid is None or name is None:
            return UNKNOWN
        if not uuid.startswith(ks.VERITY_UUID_PREFIX):
            return "off"  # the root is a device-mapper device, but not verity
        raw = dm_status(name) if dm_status is not None else None
        if raw is None:
            return "enabled"  # a verity mapping; its V/C status was not read
        try:
            status = ks.verity_status(ks.parse_dmsetup_status(raw))
        except FormatError:
            return UNKNOWN
        return str(status) if status is not None else UNKNOWN
    return "off"  # the root's device is not a device-mapper device


def collect_posture(files: KernelFiles, dm_status: DmStatus | None = None) -> dict[str, Any]:
    """Every posture fact of the system under ``files`` (module docstring)."""
    lsms = _parse(files, "/sys/kernel/security/lsm", ks.parse_lsm)
    aslr = _parse(files, "/proc/sys/kernel/randomize_va_space", ks.parse_aslr)
    sig = _parse(files, "/sys/module/module/parameters/sig_enforce", ks.parse_bool_parameter)
    cmdline = _parse(files, "/proc/cmdline", ks.parse_cmdline)
    return {
        "randomize_va_space": int(aslr) if aslr is not None else UNKNOWN,
        "selinux": _selinux(files, lsms),
        "lockdown": _lockdown(files, lsms),
        "secure_boot": _secure_boot(files),
        "module_sig_enforce": bool(sig) if sig is not None else UNKNOWN,
        "verity": _verity(files, dm_status),
        "listening_ports": _ports(files),
        "cmdline": cmdline if cmdline is not None else UNKNOWN,
    }


def dmsetup_status(name: str) -> bytes | None:
    """``dmsetup status NAME`` on this machine (needs root), None when it cannot run."""
    from bastion.errors import BackendError
    from bastion.io.runner import CommandRunner, find_tool

    if find_tool("dmsetup") is None:
        return None
    try:
        result = CommandRunner(timeout=10.0).run(["dmsetup", "status", "--", name], check=False)
    except BackendError:
        return None
    return result.stdout if result.returncode == 0 else None
