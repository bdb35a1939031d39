"""A device's own state as files: the platform store and its EFI variables, one
implementation for every platform that keeps them in a folder (``sim``, ``linux``).

* :class:`FolderStore` is the ``Platform`` store (device/platform/base.py): named
  artefacts (event logs, boot report, update records, profile) as plain files in one
  folder, written atomically (write, sync, rename), read bounded, and the device's state
  flags in ``state.json`` beside them. Names are plain file names (no folder, no leading
  dot), so a name from anywhere cannot reach outside the folder.
* :class:`EfiVarFolder` is a folder of EFI variables as efivarfs names and holds them
  (``Name-VendorGuid``: four attribute bytes, then the data), read bounded by
  ``PLATFORM_EFI_VAR_MAX_SIZE``; a name that is not ``Name-VendorGuid`` is refused.

The ``sim`` platform keeps both in its device folder (``DEV/``, ``DEV/efivars/``), the
``linux`` platform in ``/var/lib/bastion`` and efivarfs (ADR 0022, 0028).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.formats import strict_json
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import JSON_MAX_SIZE, PLATFORM_EFI_VAR_MAX_SIZE

#: the state flags' file in the store
STATE_FILE = "state.json"
#: the largest artefact the store reads back
STORE_MAX_SIZE = JSON_MAX_SIZE * 4
#: an efivarfs file name: the variable name, a dash, the vendor GUID
EFIVAR_NAME = re.compile(r"[A-Za-z0-9_]{1,64}-[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_STORE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


def check_efivar_name(name: str) -> str:
    """``name`` if it is an efivarfs ``Name-VendorGuid``, else ConfigError."""
    if not EFIVAR_NAME.fullmatch(name):
        raise ConfigError(f"EFI variable name {name!r} is not Name-VendorGuid")
    return name


@dataclass(frozen=True, slots=True)
class FolderStore:
    """Named artefacts and state flags in ``folder`` (created, mode 0700, on first write)."""

    folder: Path

    def path(self, name: str) -> Path:
        """The file of artefact ``name`` (ConfigError for anything but a plain name)."""
        if not _STORE_NAME.fullmatch(name):
            raise ConfigError(f"store name {name!r}: expected a plain file name")
        return self.folder / name

    def store(self, name: str, data: bytes) -> None:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, data)

    def load(self, name: str) -> bytes | None:
        path = self.path(name)
        if not path.exists():
            return None
        return read_bounded(path, STORE_MAX_SIZE, name)

    def state(self) -> dict[str, Any]:
        raw = self.load(STATE_FILE)
        return strict_json.loads_object(raw, what=STATE_FILE) if raw else {}

    def set_state(self, **values: Any) -> None:
        doc = self.state()
        doc.update(values)
        self.store(STATE_FILE, json.dumps(doc, sort_keys=True).encode())


@dataclass(frozen=True, slots=True)
class EfiVarFolder:
    """EFI variables as efivarfs files in ``folder`` (attributes + data)."""

    folder: Path

    def read(self, name: str) -> bytes | None:
        """Variable ``name`` (``Name-VendorGuid``), or None when it is not set."""
        path = self.folder / check_efivar_name(name)
        if not path.exists():
            return None
        return read_bounded(path, PLATFORM_EFI_VAR_MAX_SIZE, f"EFI variable {name}")

    def write(self, name: str, data: bytes) -> None:
        """Set variable ``name`` (attributes + data, as efivarfs takes them)."""
        path = self.folder / check_efivar_name(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
