"""The release file store and the read-only TUF folder: the only file I/O of releases.

:class:`ReleaseStore` keeps uploaded bundles as ``<root>/<sha256>.raucb``. An upload is
streamed into a private temporary file in the same folder while it is hashed and
counted (refused past ``max_size``); :meth:`ReleaseStore.keep` renames it to its
content address only after the bundle verified, so a half-written or unverified bundle
is never served. :func:`tuf_file` resolves a request path inside the TUF repository
folder: plain names only (no ``..``, no hidden files, no symlink leaving the folder),
regular files only, bounded size.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bastion import limits
from bastion.errors import FormatError, LimitError, NotFoundError

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Upload:
    """A received upload in the store's temporary area."""

    path: Path
    sha256: str
    length: int


class ReleaseStore:
    """Content-addressed bundle files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def receive(self, chunks: AsyncIterator[bytes], max_size: int) -> Upload:
        """Stream ``chunks`` into a temporary file; LimitError past ``max_size``."""
        self._ensure()
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        path = Path(name)
        digest = hashlib.sha256()
        length = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    length += len(chunk)
                    if length > max_size:
                        raise LimitError(f"release bundle is more than {max_size} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if length == 0:
            path.unlink(missing_ok=True)
            raise FormatError("release upload is empty: send the bundle as the request body")
        return Upload(path, digest.hexdigest(), length)

    def keep(self, upload: Upload) -> Path:
        """Move a verified upload to its content address (idempotent)."""
        final = self.path_of(upload.sha256)
        os.replace(upload.path, final)
        return final

    @staticmethod
    def discard(upload: Upload) -> None:
        upload.path.unlink(missing_ok=True)

    def path_of(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise FormatError(f"bundle sha256 {sha256[:80]!r} is not 64 lowercase hex digits")
        return self.root / f"{sha256}.raucb"

    def existing(self, sha256: str) -> Path:
        """The stored bundle file; NotFoundError when it is missing."""
        path = self.path_of(sha256)
        if not path.is_file():
            raise NotFoundError(f"bundle {sha256[:16]}... is not in the release store")
        return path


def tuf_file(root: Path | None, relative: str) -> Path:
    """The file ``relative`` inside the TUF folder ``root``; NotFoundError otherwise."""
    if root is None:
        raise NotFoundError("this server serves no TUF repository (tuf_dir is not set)")
    parts = relative.split("/")
    if not relative or len(parts) > 4 or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise NotFoundError(f"TUF path {relative[:120]!r} is not a repository file name")
    base = root.resolve()
    path = base.joinpath(*parts)
    if path.is_symlink() or not path.resolve().is_relative_to(base) or not path.is_file():
        raise NotFoundError(f"TUF file {relative!r} not found")
    size = path.stat().st_size
    if size > limits.TUF_FILE_MAX_SIZE:
        raise LimitError(f"TUF file {relative!r} is {size} bytes, limit {limits.TUF_FILE_MAX_SIZE}")
    return path
