"""The ``linux`` platform: a real device (or a VM) as device/platform/base.py's ``Platform``.

Every path is taken under ``root`` (``/`` on a device), so tests run the same code over
a fake tree: a disk image as ``ROOT/dev/vda``, a ``ROOT/sys/class/block`` tree,
efivarfs files, an ESP folder, with a recording command runner (ADR 0028).

==================  ===================================================================
disk                the block device given, or the whole disk whose GPT holds the root
                    partition ``roothash=`` names (DPS: PARTUUID = its first 128 bits);
                    partitions by GPT name, their block devices by start sector in sysfs
                    (``ROOT/sys/class/block/DISK/PART/start``)
verity, dm-crypt    the kernel's, through :mod:`bastion.storage.kernel_verity` and
                    :mod:`bastion.storage.kernel_crypt` (``veritysetup``/``cryptsetup``
                    run by ``io.runner``)
TPM                 ``device:/dev/tpmrm0`` (tss backend); ``power_on`` resets nothing:
                    the real power-on did
fuses               TPM NV bits (:class:`bastion.tpm.fuses.TpmFuseBank`)
EFI variables       ``ROOT/sys/firmware/efi/efivars/Name-Guid`` (attributes + data)
ESP                 ``ROOT/efi`` or ``ROOT/boot/efi`` (the first holding ``EFI/``)
console             stderr with sd-daemon level prefixes (journald files them)
store, state        ``ROOT/var/lib/bastion`` (on the data volume)
==================  ===================================================================
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bastion.device.platform.base import ConsoleKind, FuseBank, PartitionStorage
from bastion.device.platform.esp import Esp, FolderEsp
from bastion.device.platform.state import EfiVarFolder, FolderStore
from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    LimitError,
    NotFoundError,
)
from bastion.formats import gpt
from bastion.formats.uki import cmdline_root_hash
from bastion.io.clock import Clock, SystemClock
from bastion.io.files import read_bounded
from bastion.io.runner import CommandRunner
from bastion.limits import (
    PLATFORM_MAX_BLOCK_DEVICES,
    PLATFORM_SYSFS_MAX_SIZE,
)
from bastion.storage.disk_image import DiskImage, device_size
from bastion.storage.kernel_crypt import KernelCrypt
from bastion.storage.kernel_verity import CorruptionResponse, KernelVerity, check_name
from bastion.tpm.base import Tpm

EFIVARS = "sys/firmware/efi/efivars"
SYS_BLOCK = "sys/class/block"
STATE_DIR = "var/lib/bastion"
ESP_MOUNTS = ("efi", "boot/efi")
DEFAULT_TPM = "device:/dev/tpmrm0"
#: device-mapper names the platform gives its mappings
ROOT_MAPPING = "bastion-root"
DATA_MAPPING = "bastion-data"
#: whole disks only: not loop, RAM, zram, device-mapper, md or optical devices
_NOT_DISKS = ("loop", "ram", "zram", "dm-", "md", "sr", "nbd")
_LEVELS = {ConsoleKind.WARNING: 4, ConsoleKind.NOTE: 5, ConsoleKind.MARKER: 6}


def _read_small(path: Path, what: str) -> str:
    return read_bounded(path, PLATFORM_SYSFS_MAX_SIZE, what).decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class KernelVerifiedRoot:
    """A root opened through the kernel's dm-verity: reads of ``/dev/mapper/NAME``."""

    path: Path
    name: str
    verity: KernelVerity
    size: int

    def pread(self, length: int, offset: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FormatError(f"read of {length} at {offset} is outside the {self.size}-byte root")
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:
                raise DigestMismatchError(
                    f"dm-verity refused a read of {length} bytes at {offset} of {self.path}: "
                    "a block does not match the tree",
                    area="verity",
                    block=offset // 4096,
                ) from exc
            raise

    def close(self) -> None:
        self.verity.close(self.name)


@dataclass(frozen=True)
class LinuxPlatform:
    """The ``linux`` platform (module docstring); ``root`` prefixes every path."""

    root: Path = Path("/")
    runner: CommandRunner = field(default_factory=CommandRunner, compare=False)
    #: the disk as the device names it (``/dev/vda``); None: found by ``roothash=``
    disk_device: str | None = None
    tpm_uri: str = DEFAULT_TPM
    verity_response: CorruptionResponse = CorruptionResponse.EIO
    clock: Clock = field(default_factory=SystemClock, compare=False)
    stream: TextIO = field(default_factory=lambda: sys.stderr, compare=False)

    def _p(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    # --- the disk ----------------------------------------------------------------------

    def find_disk(self) -> str:
        """The disk's name under /dev (``vda``): given, or the one holding the root."""
        if self.disk_device is not None:
            if not self.disk_device.startswith("/dev/"):
                raise ConfigError(f"disk {self.disk_device!r} is not a /dev path")
            return self.disk_device[len("/dev/") :]
        cmdline = _read_small(self._p("/proc/cmdline"), "kernel command line")
        root_hash = cmdline_root_hash(cmdline)
        if root_hash is None:
            raise ConfigError("no roothash= on the kernel command line: name the disk")
        root_uuid, _ = gpt.verity_partition_uuids(root_hash)
        found = []
        for name in self._block_names():
            if (self._p(SYS_BLOCK) / name / "partition").exists() or name.startswith(_NOT_DISKS):
                continue
            dev = self._p(f"/dev/{name}")
            if not dev.exists():
                continue
            try:
                layout = DiskImage(dev).layout()
            except (FormatError, OSError):
                continue  # no GPT, or not readable: not ours
            if any(p.part_guid == root_uuid for p in layout.partitions):
                found.append(name)
        if len(found) != 1:
            raise NotFoundError(
                f"expected one disk with the root partition PARTUUID {root_uuid}, "
                f"found {found or 'none'}"
            )
        return found[0]

    def _block_names(self) -> list[str]:
        base = self._p(SYS_BLOCK)
        if not base.is_dir():
            raise NotFoundError(f"{base} does not exist (is sysfs mounted?)")
        names = sorted(os.listdir(base))
        if len(names) > PLATFORM_MAX_BLOCK_DEVICES:
            raise LimitError(f"{len(names)} block devices, limit {PLATFORM_MAX_BLOCK_DEVICES}")
        return names

    @property
    def image(self) -> DiskImage:
        """The disk, read and written by byte ranges (its GPT, partitions)."""
        return DiskImage(self._p(f"/dev/{self.find_disk()}"))

    def partition_device(self, name: str) -> Path:
        """The block device of GPT partition ``name`` (``ROOT/dev/vda2``), by start sector."""
        disk = self.find_disk()
        part = self.image.layout().find(name)
        base = self._p(SYS_BLOCK) / disk
        matches = []
        for child in sorted(os.listdir(base)) if base.is_dir() else []:
            start = base / child / "start"
            if (base / child / "partition").exists() and start.exists():
                text = _read_small(start, f"{child} start")
                if text.isdigit() and int(text) == part.first_lba:
                    matches.append(child)
        if len(matches) != 1:
            raise NotFoundError(
                f"partition {name!r} (LBA {part.first_lba}) of /dev/{disk}: "
                f"expected one block device in sysfs, found {matches or 'none'}"
            )
        return self._p(f"/dev/{matches[0]}")

    def disk_layout(self) -> gpt.GptDisk:
        return self.image.layout()

    def repair_disk_layout(self) -> tuple[gpt.GptDisk, list[str]]:
        return self.image.repair_layout()

    def set_partition_uuids(self, uuids: Mapping[str, uuid.UUID]) -> None:
        """Rewrite both GPT copies on the disk; the running kernel keeps its partition
        table until the next boot, which is when the new slot's PARTUUIDs are looked up."""
        self.image.set_partition_uuids(uuids)

    def read_partition(self, name: str, limit: int | None = None) -> bytes:
        return self.image.read_partition(name, limit)

    def write_partition(self, name: str, offset: int, data: bytes) -> None:
        self.image.write_partition(name, offset, data)

    def partition_storage(self, name: str) -> PartitionStorage:
        return self.image.partition_range(name)

    def verify_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> None:
        """``veritysetup verify`` of every block (no device-mapper needed)."""
        data = self.partition_device(root)
        if data_size > device_size(data):
            raise FormatError(f"root of {data_size} bytes does not fit partition {root}")
        KernelVerity(self.runner).verify(str(data), str(self.partition_device(verity)), root_hash)

    def open_root(
        self, root: str, verity: str, root_hash: bytes, data_size: int
    ) -> KernelVerifiedRoot:
        """Map ``root`` through the kernel's dm-verity (the profile's corruption response)."""
        kv = KernelVerity(self.runner)
        mapped = kv.open(
            str(self.partition_device(root)),
            ROOT_MAPPING,
            str(self.partition_device(verity)),
            root_hash,
            self.verity_response,
        )
        return KernelVerifiedRoot(self._p(mapped), ROOT_MAPPING, kv, data_size)

    def open_data_volume(self, name: str, mapping: str = DATA_MAPPING) -> Path:
        """Unlock partition ``name`` by its TPM token (systemd's plugin decides)."""
        mapped = KernelCrypt(self.runner).open_with_token(
            str(self.partition_device(name)), check_name(mapping)
        )
        return self._p(mapped)

    # --- TPM, fuses, Secure Boot ---------------------------------------------------------

    @contextlib.contextmanager
    def power_on(self) -> Iterator[Tpm]:
        """The device's TPM as this boot left it (the real power-on reset it)."""
        from bastion.tpm.uri import open_tpm

        if self.tpm_uri.startswith("device:"):
            dev = self._p(self.tpm_uri[len("device:") :])
            if not dev.exists():
                raise NotFoundError(f"TPM device {dev} does not exist (no TPM, or no driver)")
        tpm = open_tpm(self.tpm_uri)
        try:
            yield tpm
        finally:
            tpm.close()

    def fuses(self, tpm: Tpm | None = None) -> FuseBank:
        """The fuse bank in TPM NV (``tpm``: the device's open TPM)."""
        from bastion.tpm.fuses import TpmFuseBank

        if tpm is None:
            raise ConfigError("the linux platform keeps its fuses in the TPM: open it first")
        bank: FuseBank = TpmFuseBank(tpm)
        return bank

    def esp(self) -> Esp:
        for mount in ESP_MOUNTS:
            if (self._p(mount) / "EFI").is_dir():
                return FolderEsp(self._p(mount))
        raise NotFoundError(
            f"no ESP mounted at {' or '.join(str(self._p(m)) for m in ESP_MOUNTS)} "
            "(a folder holding EFI/)"
        )

    def efi_variable(self, name: str) -> bytes | None:
        """efivarfs' ``Name-VendorGuid`` (attributes + data), None when absent."""
        return EfiVarFolder(self._p(EFIVARS)).read(name)

    # --- console, store --------------------------------------------------------------------

    def console(self, kind: ConsoleKind, message: str) -> None:
        """One line to stderr as ``<level>bastion: message`` (journald's level prefix)."""
        text = " ".join(message.split())
        self.stream.write(f"<{_LEVELS[ConsoleKind(kind)]}>bastion: {text}\n")
        self.stream.flush()

    @property
    def _store(self) -> FolderStore:
        return FolderStore(self._p(STATE_DIR))

    def store(self, name: str, data: bytes) -> None:
        self._store.store(name, data)

    def load(self, name: str) -> bytes | None:
        return self._store.load(name)

    def state(self) -> dict[str, Any]:
        return self._store.state()

    def set_state(self, **values: Any) -> None:
        self._store.set_state(**values)
