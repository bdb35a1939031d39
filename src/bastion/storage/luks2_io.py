"""Where a LUKS2 volume lives: a file, a block device, or a byte range inside a disk image.

``BlockStorage`` is the narrow interface the volume needs (read, write, sync, size);
``FileRange`` implements it with ``pread``/``pwrite`` on one file descriptor, so a GPT
partition inside a disk image is ``FileRange("disk.img", offset=..., size=...)``. Tests
wrap it to stop after N writes (crash safety).
"""

from __future__ import annotations

import os
import stat
from typing import Protocol

from bastion.errors import ConfigError, FormatError, NotFoundError


class BlockStorage(Protocol):
    """Random-access bytes the volume lives in."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def sync(self) -> None: ...


class FileRange:
    """A file or block device, or the byte range ``[offset, offset+size)`` inside one."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        size: int | None = None,
        writable: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFoundError(f"device {self.path!r} does not exist") from exc
        except OSError as exc:
            raise ConfigError(f"cannot open {self.path!r}: {exc.strerror}") from exc
        st = os.fstat(self._fd)
        total = os.lseek(self._fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
        if offset < 0 or offset % 512:
            self.close()
            raise ConfigError(f"offset {offset} must be a non-negative multiple of 512")
        self.offset = offset
        self._size = total - offset if size is None else size
        if self._size <= 0 or offset + self._size > total:
            self.close()
            raise ConfigError(
                f"range [{offset}, +{size}) does not fit {self.path!r} of {total} bytes"
            )

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self._size:
            raise FormatError(
                f"read [{offset}, +{length}) beyond the end of {self.path!r} ({self._size} bytes)"
            )
        parts = []
        done = 0
        while done < length:
            chunk = os.pread(self._fd, length - done, self.offset + offset + done)
            if not chunk:
                raise FormatError(f"short read from {self.path!r}")
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def readinto(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes at ``offset`` (no intermediate copy)."""
        if offset < 0 or offset + len(view) > self._size:
            raise FormatError(
                f"read [{offset}, +{len(view)}) beyond the end of {self.path!r} ({self._size} B)"
            )
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], self.offset + offset + done)
            if got <= 0:
                raise FormatError(f"short read from {self.path!r}")
            done += got

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset < 0 or offset + len(data) > self._size:
            raise ConfigError(
                f"write [{offset}, +{len(data)}) beyond the end of {self.path!r} ({self._size} B)"
            )
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], self.offset + offset + done)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileRange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
