"""Atomic, durable file writes and bounded reads.

``atomic_write`` writes a temporary file in the target's folder, fsyncs it, renames it
over the target and fsyncs the folder, so a crash leaves either the old or the new
content, never a mix. ``read_bounded`` refuses files larger than a limit before reading
them, so untrusted files cannot exhaust memory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from bastion.errors import LimitError, NotFoundError


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permission ``mode``."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a folder so a rename inside it is durable."""
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_bounded(path: str | os.PathLike[str], limit: int, what: str = "file") -> bytes:
    """Read a whole file, refusing one larger than ``limit`` bytes."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise LimitError(f"{what} {os.fspath(path)!r} is {size} bytes, limit is {limit}")
            data = handle.read(limit + 1)
    except FileNotFoundError as exc:
        raise NotFoundError(f"{what} {os.fspath(path)!r} does not exist") from exc
    if len(data) > limit:
        raise LimitError(f"{what} {os.fspath(path)!r} exceeds {limit} bytes")
    return data
