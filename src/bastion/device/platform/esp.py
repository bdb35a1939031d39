"""The EFI System Partition as the device plane sees it: a few files, renamed atomically.

The ESP carries the boot state that the Boot Loader Specification defines: the UKIs of
the slots as type #2 entries in ``EFI/Linux/`` with boot counters in their names
(:mod:`bastion.formats.bls`), systemd-boot at ``EFI/BOOT/BOOTX64.EFI`` and its
``loader/loader.conf``. A/B fallback and commit are renames of those files, as
systemd-boot and systemd-bless-boot do them, so bastion keeps no boot-control state of
its own.

:class:`Esp` is the protocol every platform gives (``Platform.esp()``); paths are
relative, ``/``-separated, without ``..``, and compared case-sensitively (FAT folds case
on lookup; bastion writes each name one way only). :class:`FolderEsp` is an ESP that is
a mounted folder: the ``linux`` platform's ``/efi`` (or ``/boot/efi``) and tests.

Space: :meth:`Esp.space` gives the bytes in free clusters and the cluster size (a file
takes whole clusters), :meth:`Esp.size` a file's length; update preflight refuses a UKI
the ESP cannot hold before anything is written (device/update/preflight.py).

Crash order: :meth:`Esp.write` writes a temporary file, syncs it, then renames it into
place, so a power cut leaves the old file or the new one, never half of one;
:meth:`Esp.rename` is one rename (on FAT the kernel's rename is a directory-entry
update; systemd-bless-boot relies on the same).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bastion.errors import ConfigError, FormatError, NotFoundError
from bastion.io.files import atomic_write, fsync_dir, read_bounded
from bastion.limits import ESP_FILE_MAX_SIZE, ESP_MAX_LISTING

#: one path component on the ESP: FAT long-name characters bastion writes
_COMPONENT = re.compile(r"[A-Za-z0-9_.+\-]{1,255}")


def check_path(path: str) -> str:
    """``path`` if it is a relative ``/``-separated ESP path without ``.``/``..``; else
    FormatError naming it."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") or not _COMPONENT.fullmatch(p) for p in parts):
        raise FormatError(f"ESP path {path!r} is not a relative path of plain names")
    return path


@dataclass(frozen=True, slots=True)
class EspSpace:
    """Free space on an ESP: bytes in free clusters, and the cluster (allocation) size."""

    free: int
    cluster: int

    def __post_init__(self) -> None:
        if self.free < 0 or self.cluster <= 0:
            raise FormatError(f"ESP space: free {self.free}, cluster {self.cluster} bytes")

    def allocated(self, size: int) -> int:
        """The bytes a file of ``size`` bytes takes (whole clusters)."""
        return -(-size // self.cluster) * self.cluster


class Esp(Protocol):
    """The files of an EFI System Partition."""

    def list(self, folder: str) -> list[str]:
        """The file names (not folders) directly inside ``folder``, sorted; [] if absent."""
        ...

    def read(self, path: str, limit: int = ESP_FILE_MAX_SIZE) -> bytes:
        """A file's bytes (NotFoundError if absent, LimitError over ``limit``)."""
        ...

    def write(self, path: str, data: bytes) -> None:
        """Create or replace a file atomically (temporary file, sync, rename)."""
        ...

    def rename(self, old: str, new: str) -> None:
        """Rename a file within its folder (NotFoundError if ``old`` is absent)."""
        ...

    def remove(self, path: str) -> None:
        """Delete a file (NotFoundError if absent)."""
        ...

    def size(self, path: str) -> int:
        """A file's length in bytes (NotFoundError if absent)."""
        ...

    def space(self) -> EspSpace:
        """The free space of the filesystem."""
        ...


class FolderEsp:
    """An ESP mounted at (or staged in) a folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"ESP folder {os.fspath(root)!r} does not exist")

    def _path(self, path: str) -> Path:
        return self.root / check_path(path)

    def list(self, folder: str) -> list[str]:
        target = self._path(folder)
        if not target.is_dir():
            return []
        names = sorted(e.name for e in os.scandir(target) if e.is_file(follow_symlinks=False))
        if len(names) > ESP_MAX_LISTING:
            raise FormatError(
                f"ESP folder {folder!r} holds {len(names)} files, limit {ESP_MAX_LISTING}"
            )
        return names

    def read(self, path: str, limit: int = ESP_FILE_MAX_SIZE) -> bytes:
        return read_bounded(self._path(path), limit, "ESP file")

    def write(self, path: str, data: bytes) -> None:
        atomic_write(self._path(path), data)

    def rename(self, old: str, new: str) -> None:
        src, dst = self._path(old), self._path(new)
        if src.parent != dst.parent:
            raise FormatError(f"ESP rename {old!r} -> {new!r} crosses folders")
        try:
            os.rename(src, dst)
        except FileNotFoundError as exc:
            raise NotFoundError(f"ESP file {old!r} does not exist") from exc
        fsync_dir(src.parent)

    def remove(self, path: str) -> None:
        target = self._path(path)
        try:
            os.unlink(target)
        except FileNotFoundError as exc:
            raise NotFoundError(f"ESP file {path!r} does not exist") from exc
        fsync_dir(target.parent)

    def size(self, path: str) -> int:
        try:
            return os.stat(self._path(path)).st_size
        except FileNotFoundError as exc:
            raise NotFoundError(f"ESP file {path!r} does not exist") from exc

    def space(self) -> EspSpace:
        """statvfs of the mounted filesystem: blocks an unprivileged writer may use
        (``f_bavail``) of ``f_frsize`` bytes; vfat reports its cluster as ``f_bsize``."""
        st = os.statvfs(self.root)
        return EspSpace(st.f_bavail * st.f_frsize, max(st.f_bsize, st.f_frsize, 1))
