"""Which device platform a device-side command works on (ADR 0028, 2026-12-06 section).

``DEV`` names a sim device folder (the ``sim`` platform, the default). ``--platform linux``
works on the running device instead (device/platform/linux.py): no ``DEV``; ``--root PATH``
prefixes every path (``/`` on a device; a fake tree in tests), ``--disk /dev/X`` names the
disk when the kernel command line has no ``roothash=``, and ``--tpm URI`` replaces
``device:/dev/tpmrm0`` (a software TPM over a fake tree).

:func:`device_platform` is the one place that decides; it returns a :class:`DevicePlatform`:
the ``Platform`` protocol object, the folder of its TUF metadata, and :meth:`fuse_tpm`, the
TPM its fuse bank needs (the sim's own rules; on linux the device's TPM, always: a linux
device keeps its fuses in TPM NV bits, and a missing TPM is refused, never read as "no
fuses"). ``sim`` is set only on the sim platform, for what only the sim can do (its
firmware's slot choice); :func:`sim_only` refuses the rest with what to do on a real device.

The slot booted: the sim firmware records it (``update-booted.json``); on linux
:meth:`DevicePlatform.sync_booted` derives that record from what systemd-boot exported,
``LoaderEntrySelected`` in efivarfs, and whether the entry's file on the ESP still carries
a boot counter (a trial). Without that variable, or when it names no bastion slot entry on
the ESP, the commands that read the booted slot refuse: a record left by an earlier boot
would settle the wrong slot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bastion.device.platform.base import Platform
from bastion.device.platform.linux import DEFAULT_TPM, STATE_DIR, LinuxPlatform
from bastion.device.platform.sim import SimPlatform
from bastion.device.update import slots, tuf_update
from bastion.errors import ConfigError, FormatError, NotFoundError
from bastion.formats import bls
from bastion.tpm.base import Tpm

PLATFORMS = ("sim", "linux")
#: systemd-boot's entry of this boot (attributes + NUL-terminated UTF-16LE id)
LOADER_ENTRY_SELECTED = "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def add_platform_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``[DEV] --platform sim|linux [--root PATH] [--disk DEV] [--tpm URI]``."""
    parser.add_argument(
        "device", metavar="DEV", nargs="?", default=None, help="device folder (sim platform)"
    )
    add_linux_flags(parser)
    parser.add_argument(
        "--tpm", metavar="URI", default=None, help=f"linux: the TPM (default {DEFAULT_TPM})"
    )


def add_linux_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--platform sim|linux [--root PATH] [--disk DEV]`` (a command with a ``DEV`` and
    ``--tpm`` of its own, e.g. ``agent run``)."""
    parser.add_argument(
        "--platform",
        choices=PLATFORMS,
        default="sim",
        help="sim: the device folder DEV (default); linux: this running device",
    )
    parser.add_argument(
        "--root", metavar="PATH", default=None, help="linux: prefix of every path (default /)"
    )
    parser.add_argument(
        "--disk",
        metavar="DEV",
        default=None,
        help="linux: the disk, e.g. /dev/vda (default: the one holding roothash='s partition)",
    )


@dataclass(frozen=True)
class DevicePlatform:
    """A device-side command's platform (module docstring)."""

    platform: Platform
    #: where the device's TUF metadata lives
    metadata_dir: Path
    #: what messages call the device
    label: str
    #: the sim platform object, None on a real device
    sim: SimPlatform | None = None

    @contextlib.contextmanager
    def fuse_tpm(self) -> Iterator[Tpm | None]:
        """The TPM :meth:`Platform.fuses` needs for the length of a command: the sim's
        rule (SimPlatform.fuse_tpm), or the linux device's TPM as this boot left it
        (NotFoundError when its device node is missing)."""
        if self.sim is not None:
            with self.sim.fuse_tpm() as tpm:
                yield tpm
            return
        with self.platform.power_on() as opened:
            yield opened

    def sync_booted(self) -> None:
        """On linux, record the slot this boot came from (module docstring); the sim's
        firmware has recorded it already."""
        if self.sim is not None:
            return
        booted = loader_booted(self.platform)
        try:
            recorded = slots.booted(self.platform)
        except FormatError:
            recorded = None  # a damaged record from an earlier boot: replaced below
        if recorded != booted:
            self.platform.store(slots.BOOTED, json.dumps(asdict(booted), sort_keys=True).encode())


def loader_booted(platform: Platform) -> slots.Booted:
    """The slot entry systemd-boot booted, from ``LoaderEntrySelected`` and the ESP."""
    raw = platform.efi_variable(LOADER_ENTRY_SELECTED)
    if raw is None:
        raise NotFoundError(
            "no LoaderEntrySelected EFI variable: this system was not "
            "booted by systemd-boot, or efivarfs is not mounted; the booted slot is unknown"
        )
    try:
        text = raw[4:].decode("utf-16-le").split("\0", 1)[0]
    except UnicodeDecodeError as exc:
        raise FormatError("LoaderEntrySelected is not UTF-16LE text") from exc
    stem = bls.parse(text).name if text.endswith(bls.SUFFIXES) else text
    found = [e for e in slots.entries(platform.esp()) if e.name.name == stem]
    if len(found) != 1:
        raise NotFoundError(
            f"systemd-boot booted {text!r}, which is not one bastion slot entry on the ESP "
            f"(found {len(found)}): the booted slot is unknown"
        )
    return slots.Booted(found[0].slot, stem, found[0].name.counting)


def _refuse_linux_flags(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    given = [f"--{flag}" for flag in flags if getattr(args, flag, None) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} only with --platform linux")


def device_platform(args: argparse.Namespace) -> DevicePlatform:
    """The platform ``args`` name (ConfigError for a contradictory command line)."""
    kind = getattr(args, "platform", "sim")
    dev = getattr(args, "device", None)
    if kind == "sim":
        _refuse_linux_flags(args, ("root", "disk", "tpm"))
        if dev is None:
            raise ConfigError("name the device folder DEV, or give --platform linux")
        sim = SimPlatform(Path(dev))
        _ = sim.config  # NotFoundError unless DEV is a device folder
        return DevicePlatform(sim, sim.folder / tuf_update.METADATA_DIR, str(sim.folder), sim)
    if kind != "linux":
        raise ConfigError(f"unknown platform {kind!r}: expected one of {', '.join(PLATFORMS)}")
    if dev is not None:
        raise ConfigError(
            f"--platform linux works on this device and takes no DEV (got {dev!r}); "
            "give --root PATH for a tree mounted elsewhere"
        )
    return linux_device(args)


def linux_device(args: argparse.Namespace) -> DevicePlatform:
    """The linux platform of ``--root``, ``--disk`` and ``--tpm`` (for ``agent run``,
    whose ``DEV`` is its identity folder)."""
    root = Path(args.root) if args.root is not None else Path("/")
    if not root.is_absolute():
        root = root.resolve()
    linux = LinuxPlatform(root, disk_device=args.disk, tpm_uri=args.tpm or DEFAULT_TPM)
    return DevicePlatform(
        linux, root / STATE_DIR / tuf_update.METADATA_DIR, f"linux device at {root}"
    )


def agent_platform(args: argparse.Namespace) -> DevicePlatform | None:
    """``agent run``'s linux platform, or None on sim (ConfigError for linux-only flags)."""
    if getattr(args, "platform", "sim") == "sim":
        _refuse_linux_flags(args, ("root", "disk"))
        return None
    return linux_device(args)


def sim_only(dev: DevicePlatform, what: str, instead: str) -> SimPlatform:
    """The sim platform for ``what``, or a ConfigError that says what to do ``instead``."""
    if dev.sim is None:
        raise ConfigError(f"{what} is the sim platform's alone; on a real device {instead}")
    return dev.sim
