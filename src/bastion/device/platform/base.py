"""The ``Platform`` protocol: the only way the device plane touches hardware.

A platform gives the boot chain (device/boot.py) and the tools after it:

* the **disk**, by partition name: its GPT (repaired as firmware does), partition
  reads and writes, a partition as block storage (the LUKS2 data volume), and a slot's
  root through dm-verity (userspace on ``sim``, the kernel's on ``linux``);
* the **TPM**, reset as at power-on for the length of one boot;
* **Secure Boot variables and fuses**: the one-time-programmable fuse bank (platform
  root key hash, security-version counter) and the firmware's EFI variables;
* a **console**: warnings, notes and stage markers as the boot emits them;
* a **clock**;
* a small **store** of named artefacts (security profile, event log, boot report,
  device state flags).

Code that decides (verify, predict, choose a slot) takes bytes and values from these;
a sim boot and a real boot run the same decisions.
"""

from __future__ import annotations

import contextlib
import enum
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from bastion.device.platform.esp import Esp
from bastion.formats import gpt
from bastion.io.clock import Clock
from bastion.storage.luks2_io import BlockStorage
from bastion.tpm.base import Tpm


class ConsoleKind(enum.StrEnum):
    """What a console line is."""

    MARKER = "marker"  # a stage was reached (what a real device prints on its serial port)
    NOTE = "note"
    WARNING = "warning"


class FuseBank(Protocol):
    """The fuse interface the chain uses (tpm/fuses.py implements it)."""

    def key_hash(self) -> bytes | None: ...

    def burn_key_hash(self, key_hash: bytes) -> None: ...

    def counter(self) -> int: ...

    def blow_to(self, value: int) -> None: ...


class VerifiedRoot(Protocol):
    """A slot's root opened through dm-verity: every byte read is checked."""

    @property
    def size(self) -> int: ...

    def pread(self, length: int, offset: int) -> bytes: ...

    def close(self) -> None: ...


class PartitionStorage(BlockStorage, Protocol):
    """A partition as block storage, closed after use."""

    def close(self) -> None: ...


class Platform(Protocol):
    """Hardware of one device, as the device plane sees it."""

    # --- the disk, by partition name ---------------------------------------------------

    def disk_layout(self) -> gpt.GptDisk:
        """The disk's GPT (the backup copy is used if the primary is damaged)."""
        ...

    def repair_disk_layout(self) -> tuple[gpt.GptDisk, list[str]]:
        """The GPT, a damaged copy rewritten from the intact one (one line per repair)."""
        ...

    def set_partition_uuids(self, uuids: Mapping[str, uuid.UUID]) -> None:
        """Give the named partitions these PARTUUIDs (both GPT copies; an update names a
        filled slot's root and verity partitions by its root hash, as the DPS says)."""
        ...

    def read_partition(self, name: str, limit: int | None = None) -> bytes:
        """The bytes of partition ``name`` (the first ``limit`` bytes when given)."""
        ...

    def write_partition(self, name: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` inside partition ``name``."""
        ...

    def partition_storage(self, name: str) -> PartitionStorage:
        """Partition ``name`` as block storage (the caller closes it)."""
        ...

    def verify_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> None:
        """Check every block of partition ``root`` against ``root_hash`` (raises)."""
        ...

    def open_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> VerifiedRoot:
        """Partition ``root`` through dm-verity with hash partition ``verity``."""
        ...

    # --- TPM, fuses, Secure Boot ---------------------------------------------------------

    def power_on(self) -> contextlib.AbstractContextManager[Tpm]:
        """The TPM, with PCRs reset as at power-on, for the length of one boot."""
        ...

    def fuses(self, tpm: Tpm | None = None) -> FuseBank:
        """The one-time-programmable fuse bank (some platforms keep it in the TPM)."""
        ...

    def esp(self) -> Esp:
        """The EFI System Partition: UKIs as BLS type #2 entries with boot counters,
        systemd-boot and its loader.conf (device/platform/esp.py)."""
        ...

    def efi_variable(self, name: str) -> bytes | None:
        """The EFI variable ``Name-VendorGuid`` (attributes + data as efivarfs gives
        them), or None when the platform has no such variable."""
        ...

    # --- console, clock, store ------------------------------------------------------------

    def console(self, kind: ConsoleKind, message: str) -> None:
        """Emit one console line."""
        ...

    @property
    def clock(self) -> Clock:
        """The device's clock."""
        ...

    def store(self, name: str, data: bytes) -> None:
        """Persist a boot artefact (event log, report) by name."""
        ...

    def load(self, name: str) -> bytes | None:
        """A stored artefact, or None."""
        ...

    def state(self) -> dict[str, Any]:
        """The device's state flags (e.g. ``reprovision``, ``data_volume``)."""
        ...

    def set_state(self, **values: Any) -> None:
        """Update state flags."""
        ...
