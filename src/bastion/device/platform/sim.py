"""The ``sim`` platform: a device folder, implementing device/platform/base.py.

The ``sim`` platform is a folder::

    DEV/device.json     {"platform": "sim", "tpm": "software" | "swtpm" | <TPM URI>,
                         "fuses": "file" | "tpm"}
    DEV/disk.img        the GPT disk (a copy of the signed image, then the device's own)
    DEV/fuses           the fuse bank file (tpm/fuses.py FileFuseBank), unless the fuses
                        are TPM NV bits indexes (TpmFuseBank: the "TPM NV counter" case)
    DEV/tpm.state       the software TPM (or DEV/swtpm/ for a managed swtpm)
    DEV/profile.json    the signed security profile
    DEV/eventlog.bin    the TCG event log of the last boot
    DEV/boot.json       the report of the last boot
    DEV/state.json      device flags (e.g. "reprovision": true after a wipe)
    DEV/efivars/        EFI variables as efivarfs names them (``Name-VendorGuid``), if any:
                        the sim firmware keeps its Secure Boot authority in the fuses

The disk is reached by partition name (storage/disk_image.py over ``disk.img``), verity
runs in userspace over the real bytes, and the console keeps its lines in memory
(``console_lines``). Nothing is faked: the chain reads and verifies the real bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.device.platform.base import ConsoleKind, FuseBank, PartitionStorage, VerifiedRoot
from bastion.errors import ConfigError, FormatError, NotFoundError
from bastion.formats import gpt, strict_json
from bastion.io.clock import Clock, SystemClock
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import JSON_MAX_SIZE, PLATFORM_EFI_VAR_MAX_SIZE
from bastion.storage.disk_image import DiskImage
from bastion.tpm.base import Tpm

DEVICE_FILE = "device.json"


#: an efivarfs file name: the variable name, a dash, the vendor GUID
_EFIVAR_NAME = re.compile(r"[A-Za-z0-9_]{1,64}-[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class SimPlatform:
    """The ``sim`` platform over a device folder."""

    folder: Path
    clock: Clock = field(default_factory=SystemClock, compare=False)
    console_lines: list[tuple[ConsoleKind, str]] = field(default_factory=list, compare=False)

    @property
    def disk(self) -> Path:
        """The disk image file (for creating and inspecting a sim device)."""
        return self.folder / "disk.img"

    # --- the disk ----------------------------------------------------------------------

    @property
    def image(self) -> DiskImage:
        return DiskImage(self.disk)

    def disk_layout(self) -> gpt.GptDisk:
        return self.image.layout()

    def repair_disk_layout(self) -> tuple[gpt.GptDisk, list[str]]:
        return self.image.repair_layout()

    def read_partition(self, name: str, limit: int | None = None) -> bytes:
        return self.image.read_partition(name, limit)

    def write_partition(self, name: str, offset: int, data: bytes) -> None:
        self.image.write_partition(name, offset, data)

    def partition_storage(self, name: str) -> PartitionStorage:
        return self.image.partition_range(name)

    def verify_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> None:
        self.image.verify_root(root, verity, root_hash, data_size)

    def open_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> VerifiedRoot:
        return self.image.open_root(root, verity, root_hash, data_size)

    # --- Secure Boot, console ------------------------------------------------------------

    def efi_variable(self, name: str) -> bytes | None:
        """``DEV/efivars/<name>``, or None (the sim firmware needs none to boot)."""
        if not _EFIVAR_NAME.fullmatch(name):
            raise ConfigError(f"EFI variable name {name!r} is not Name-VendorGuid")
        path = self.folder / "efivars" / name
        if not path.exists():
            return None
        return read_bounded(path, PLATFORM_EFI_VAR_MAX_SIZE, f"EFI variable {name}")

    def console(self, kind: ConsoleKind, message: str) -> None:
        self.console_lines.append((kind, message))

    @property
    def config(self) -> dict[str, Any]:
        raw = self.load(DEVICE_FILE)
        if raw is None:
            raise NotFoundError(f"{self.folder} is not a bastion device (no {DEVICE_FILE})")
        doc = strict_json.loads(raw, what=str(self.folder / DEVICE_FILE))
        if not isinstance(doc, dict) or doc.get("platform") != "sim":
            raise FormatError(f"{self.folder / DEVICE_FILE} is not a sim device description")
        return doc

    def fuses(self, tpm: Tpm | None = None) -> FuseBank:
        """The fuse bank: the ``fuses`` file, or TPM NV bits when device.json says
        ``"fuses": "tpm"`` (then ``tpm`` must be the device's open TPM)."""
        from bastion.tpm.fuses import FileFuseBank, TpmFuseBank

        if self.config.get("fuses", "file") == "tpm":
            if tpm is None:
                raise ConfigError(f"device {self.folder} keeps its fuses in the TPM: open it")
            nv: FuseBank = TpmFuseBank(tpm)
            return nv
        bank: FuseBank = FileFuseBank(self.folder / "fuses")
        return bank

    def tpm_spec(self) -> str:
        """The TPM URI this device uses (``software:DEV/tpm.state`` by default)."""
        kind = str(self.config.get("tpm", "software"))
        if kind == "software":
            return f"software:{self.folder.resolve() / 'tpm.state'}"
        return kind

    @contextlib.contextmanager
    def power_on(self) -> Iterator[Tpm]:
        from bastion.tpm.uri import open_tpm

        kind = str(self.config.get("tpm", "software"))
        if kind == "swtpm":
            from bastion.tpm.swtpm import Swtpm

            state = (self.folder / "swtpm").resolve()
            state.mkdir(exist_ok=True)
            with Swtpm.start(state) as sw:
                tpm = open_tpm(sw.uri)
                try:
                    yield tpm
                finally:
                    tpm.close()
                    sw.save_volatile()  # the TPM stays "on": PCRs survive the process
            return
        tpm = open_tpm(self.tpm_spec())
        try:
            reset = getattr(tpm, "power_cycle", None)
            if reset is None:
                raise ConfigError(
                    f"TPM {kind!r} cannot be reset by the sim platform; use software or swtpm"
                )
            reset()
            yield tpm
        finally:
            tpm.close()

    @contextlib.contextmanager
    def attached_tpm(self) -> Iterator[Tpm]:
        """The device's own TPM as its last boot left it (no reset): the software TPM's
        state file, or the device's swtpm resumed with the PCRs its boot measured.
        For provisioning and inspection after a boot."""
        from bastion.tpm.uri import open_tpm

        if str(self.config.get("tpm", "software")) == "swtpm":
            from bastion.tpm.swtpm import Swtpm

            state = (self.folder / "swtpm").resolve()
            state.mkdir(exist_ok=True)
            with Swtpm.start(state, resume=True) as sw:
                tpm = open_tpm(sw.uri)
                try:
                    yield tpm
                finally:
                    tpm.close()
                    sw.save_volatile()
            return
        tpm = open_tpm(self.tpm_spec())
        try:
            yield tpm
        finally:
            tpm.close()

    def open_tpm(self) -> Tpm:
        """The device TPM without resetting it (inspection after a boot)."""
        from bastion.tpm.uri import open_tpm

        return open_tpm(self.tpm_spec())

    def store(self, name: str, data: bytes) -> None:
        atomic_write(self.folder / name, data)

    def load(self, name: str) -> bytes | None:
        path = self.folder / name
        if not path.exists():
            return None
        return read_bounded(path, JSON_MAX_SIZE * 4, name)

    def state(self) -> dict[str, Any]:
        raw = self.load("state.json")
        return strict_json.loads_object(raw, what="state.json") if raw else {}

    def set_state(self, **values: Any) -> None:
        doc = self.state()
        doc.update(values)
        self.store("state.json", json.dumps(doc, sort_keys=True).encode())


def create_sim_folder(folder: Path, tpm: str, fuses: str = "file") -> SimPlatform:
    """Create an empty device folder (ConflictError-free: refuses a non-empty folder)."""
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"device folder {folder} exists and is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    plat = SimPlatform(folder)
    if fuses not in ("file", "tpm"):
        raise ConfigError(f"--fuses {fuses!r}: expected file or tpm")
    doc = {"platform": "sim", "tpm": tpm, "fuses": fuses}
    plat.store(DEVICE_FILE, json.dumps(doc, indent=2).encode())
    return plat
