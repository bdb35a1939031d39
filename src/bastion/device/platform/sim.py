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
    DEV/esp/            the EFI System Partition's files when disk.img has no ESP
                        partition (else the ESP is that FAT partition, esp_image.py)
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
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.device.platform.base import ConsoleKind, FuseBank, PartitionStorage, VerifiedRoot
from bastion.device.platform.esp import Esp, FolderEsp
from bastion.device.platform.esp_image import ImageEsp
from bastion.device.platform.state import EfiVarFolder, FolderStore
from bastion.errors import ConfigError, FormatError, NotFoundError
from bastion.formats import gpt, strict_json
from bastion.io.clock import Clock, SystemClock
from bastion.storage.disk_image import DiskImage
from bastion.tpm.base import Tpm

DEVICE_FILE = "device.json"


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

    def set_partition_uuids(self, uuids: Mapping[str, uuid.UUID]) -> None:
        self.image.set_partition_uuids(uuids)

    def read_partition(self, name: str, limit: int | None = None) -> bytes:
        return self.image.read_partition(name, limit)

    def write_partition(self, name: str, offset: int, data: bytes) -> None:
        self.image.write_partition(name, offset, data)

    def esp(self) -> Esp:
        """The ESP: the FAT partition of ``disk.img`` (GPT type EFI System) through
        mtools (device/platform/esp_image.py); for a disk without one (the old boot
        container), the folder ``DEV/esp/`` (created on first use)."""
        if self.disk.exists():
            for part in self.disk_layout().partitions:
                if part.type_guid == gpt.TYPE_ESP:
                    return ImageEsp(self.disk, part.offset)
        (self.folder / "esp").mkdir(exist_ok=True)
        return FolderEsp(self.folder / "esp")

    def partition_storage(self, name: str) -> PartitionStorage:
        return self.image.partition_range(name)

    def verify_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> None:
        self.image.verify_root(root, verity, root_hash, data_size)

    def open_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> VerifiedRoot:
        return self.image.open_root(root, verity, root_hash, data_size)

    # --- Secure Boot, console ------------------------------------------------------------

    def efi_variable(self, name: str) -> bytes | None:
        """``DEV/efivars/<name>``, or None (the sim firmware needs none to boot)."""
        return EfiVarFolder(self.folder / "efivars").read(name)

    def set_efi_variable(self, name: str, data: bytes) -> None:
        """Write ``DEV/efivars/<name>`` (attributes + data, as efivarfs); the sim
        firmware's variables are set at ``device create`` (its "factory enrolment")."""
        EfiVarFolder(self.folder / "efivars").write(name, data)

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

    @contextlib.contextmanager
    def fuse_tpm(self) -> Iterator[Tpm | None]:
        """What :meth:`fuses` needs: the device's TPM as its last boot left it when
        device.json says ``"fuses": "tpm"``, else None (the ``fuses`` file).

        Fails closed: a TPM-fused device whose TPM state is missing (``DEV/tpm.state``,
        or ``DEV/swtpm/`` empty) is refused (NotFoundError), because a TPM opened
        afresh there would read as a bank with no fuse blown."""
        if self.config.get("fuses", "file") != "tpm":
            yield None
            return
        kind = str(self.config.get("tpm", "software"))
        state = {"software": self.folder / "tpm.state", "swtpm": self.folder / "swtpm"}.get(kind)
        if state is not None and not (state.is_file() or (state.is_dir() and any(state.iterdir()))):
            raise NotFoundError(
                f"device {self.folder} keeps its fuses in its {kind} TPM, whose state "
                f"{state} is missing: refusing to read the fuses from a new TPM"
            )
        with self.attached_tpm() as tpm:
            yield tpm

    def open_tpm(self) -> Tpm:
        """The device TPM without resetting it (inspection after a boot)."""
        from bastion.tpm.uri import open_tpm

        return open_tpm(self.tpm_spec())

    # --- store (device/platform/state.py) --------------------------------------------------

    def store(self, name: str, data: bytes) -> None:
        FolderStore(self.folder).store(name, data)

    def load(self, name: str) -> bytes | None:
        return FolderStore(self.folder).load(name)

    def state(self) -> dict[str, Any]:
        return FolderStore(self.folder).state()

    def set_state(self, **values: Any) -> None:
        FolderStore(self.folder).set_state(**values)


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
