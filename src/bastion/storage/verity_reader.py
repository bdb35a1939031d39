"""dm-verity on files: format a data region, verify it fully, and read it lazily, verified.

The I/O half of :mod:`bastion.formats.verity` (which decides; this module only reads,
writes and fans work out). Regions are byte ranges inside ordinary files, so a root
partition and its hash partition can live inside one GPT disk image:

* :func:`format_region` hashes a ``(data file, offset, length)`` region and writes the
  superblock (optional) and the tree into a ``(hash file, offset)`` region, which may be
  the same file (an appended hash area). Returns the root hash.
* :func:`verify_region` checks every hash block top-down from the root hash, then every
  data block, and raises :class:`DigestMismatchError` naming the first bad block.
* :class:`VerityReader` is a read-only, seekable file object over the data region that
  verifies every block it returns against the root hash, caching verified hash blocks,
  the way the kernel's dm-verity target reads a root filesystem.

Leaf hashing (nearly all the work) uses every core: the data region is cut into ranges
aligned to whole level-0 hash blocks, each hashed by a worker process reading with
``os.preadv`` (forked, or started by a fork server when the caller runs other threads);
the parent builds the upper levels.
"""

from __future__ import annotations

import hmac
import io
import multiprocessing
import os
import stat
import threading
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bastion.errors import (
    BackendError,
    ConfigError,
    DigestMismatchError,
    FormatError,
    LimitError,
    NotFoundError,
    VerificationError,
)
from bastion.formats.verity import (
    SUPERBLOCK_SIZE,
    VerityHasher,
    VerityParams,
    VeritySuperblock,
    VerityTree,
    build_upper_levels,
    check_data_digests,
    check_root_block,
    hash_start_block,
    level_digest,
    verify_hash_tree,
)
from bastion.limits import VERITY_MAX_TREE_SIZE, MiB

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: inputs smaller than this are hashed in-process (a fork costs more than it saves)
PARALLEL_MIN_BYTES = 16 * MiB
#: bytes read per pread while hashing
READ_CHUNK = 4 * MiB
#: verified hash blocks a reader keeps by default
DEFAULT_CACHE_BLOCKS = 1024

PathLike = str | os.PathLike[str]


def default_workers() -> int:
    """Worker processes for full hashing: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _open(path: PathLike, what: str, flags: int = os.O_RDONLY) -> int:
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(path)
        return fd
    except FileNotFoundError as exc:
        raise NotFoundError(f"verity {what} file {os.fspath(path)!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise FormatError(f"verity {what} file {os.fspath(path)!r} is a directory") from exc
    except OSError as exc:
        raise BackendError(
            f"cannot open verity {what} file {os.fspath(path)!r}: {exc.strerror}"
        ) from exc


def _size(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    return os.lseek(fd, 0, os.SEEK_END)


def _pread_full(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < length:
        try:
            chunk = os.pread(fd, length - got, offset + got)
        except OSError as exc:
            raise BackendError(f"read error at byte {offset + got}: {exc.strerror}") from exc
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def _need(fd: int, path: PathLike, what: str, end: int) -> None:
    size = _size(fd)
    if size < end:
        raise FormatError(
            f"verity {what} file {os.fspath(path)!r} is {size} bytes, too small: "
            f"the {what} region ends at byte {end}"
        )


def read_superblock(hash_path: PathLike, hash_offset: int = 0) -> VeritySuperblock:
    """Parse the superblock at ``hash_offset`` of ``hash_path``."""
    fd = _open(hash_path, "hash")
    try:
        raw = _pread_full(fd, SUPERBLOCK_SIZE, hash_offset)
    finally:
        os.close(fd)
    if len(raw) < SUPERBLOCK_SIZE:
        raise FormatError(
            f"verity superblock in {os.fspath(hash_path)!r} at offset {hash_offset} is "
            f"truncated: {len(raw)} bytes (expected {SUPERBLOCK_SIZE})"
        )
    return VeritySuperblock.parse(raw)


# --- leaf hashing, in workers ------------------------------------------------------------


def _hash_range(job: tuple[str, int, VerityParams, int, int]) -> bytes:
    """Packed level-0 bytes for ``count`` data blocks starting at data block ``first``."""
    path, data_offset, params, first, count = job
    hasher = VerityHasher(params)
    dbs = params.data_block_size
    step = max(dbs, READ_CHUNK // dbs * dbs)
    digests: list[bytes] = []
    buffer = bytearray(min(step, count * dbs))
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        start = data_offset + first * dbs
        end = start + count * dbs
        for pos in range(start, end, step):
            want = min(step, end - pos)
            got = 0
            while got < want:
                n = os.preadv(fd, [view[got:want]], pos + got)
                if n <= 0:
                    raise FormatError(f"verity data file {path!r} ended at byte {pos + got}")
                got += n
            digests.extend(hasher.digests(view[:want], dbs))
    finally:
        view.release()
        os.close(fd)
    return hasher.pack(digests)


def _start_method() -> str:
    """``fork`` (fast) unless other threads run: a fork could copy a lock one of them holds."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _jobs(
    path: str, data_offset: int, params: VerityParams, pieces: int
) -> list[tuple[str, int, VerityParams, int, int]]:
    fan = params.fanout
    groups = -(-params.data_blocks // fan)
    per = max(1, -(-groups // pieces)) * fan
    return [
        (path, data_offset, params, first, min(per, params.data_blocks - first))
        for first in range(0, params.data_blocks, per)
    ]


def hash_data_region(
    data_path: PathLike,
    params: VerityParams,
    *,
    data_offset: int = 0,
    workers: int | None = None,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES,
) -> bytes:
    """Level 0 of the tree (packed hash blocks) for the data region, using ``workers`` cores."""
    path = os.fspath(data_path)
    nworkers = default_workers() if workers is None else max(1, workers)
    if nworkers == 1 or params.data_size < parallel_min_bytes:
        return _hash_range((path, data_offset, params, 0, params.data_blocks))
    jobs = _jobs(path, data_offset, params, nworkers * 4)
    ctx = multiprocessing.get_context(_start_method())
    with ctx.Pool(nworkers) as pool:
        parts = pool.map(_hash_range, jobs, chunksize=1)
    return b"".join(parts)


def compute_tree(
    data_path: PathLike,
    params: VerityParams,
    *,
    data_offset: int = 0,
    workers: int | None = None,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES,
) -> VerityTree:
    """The whole tree over the data region (levels above 0 built here, in the parent)."""
    fd = _open(data_path, "data")
    try:
        _need(fd, data_path, "data", data_offset + params.data_size)
        if params.data_blocks == 1:
            block = _pread_full(fd, params.data_block_size, data_offset)
            return VerityTree(params, VerityHasher(params).digest(block), ())
    finally:
        os.close(fd)
    level0 = hash_data_region(
        data_path,
        params,
        data_offset=data_offset,
        workers=workers,
        parallel_min_bytes=parallel_min_bytes,
    )
    return build_upper_levels(params, level0)


# --- format ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerityFormatResult:
    """What :func:`format_region` wrote."""

    params: VerityParams
    root_hash: bytes
    superblock: VeritySuperblock | None
    hash_offset: int
    hash_start_block: int
    hash_end: int  # first byte after the hash region in the hash file


def _same_file(fd_a: int, fd_b: int) -> bool:
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def format_region(
    data_path: PathLike,
    hash_path: PathLike,
    params: VerityParams,
    *,
    data_offset: int = 0,
    hash_offset: int = 0,
    uuid: uuidlib.UUID | None = None,
    superblock: bool = True,
    workers: int | None = None,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES,
) -> VerityFormatResult:
    """Hash the data region and write superblock + tree at ``hash_offset`` of ``hash_path``.

    The hash file is created if missing and never truncated, so the hash region can sit
    inside a larger image or after the data in the same file (the regions must not
    overlap). ``uuid`` defaults to a random one, as with veritysetup.
    """
    if data_offset < 0:
        raise ConfigError(f"verity data offset {data_offset} is negative")
    start = hash_start_block(hash_offset, params.hash_block_size, superblock=superblock)
    hash_end = (start + params.geometry().tree_blocks) * params.hash_block_size
    data_fd = _open(data_path, "data")
    try:
        _need(data_fd, data_path, "data", data_offset + params.data_size)
        hash_fd = _open(hash_path, "hash", os.O_RDWR | os.O_CREAT)
        try:
            data_end = data_offset + params.data_size
            if (
                _same_file(data_fd, hash_fd)
                and hash_offset < data_end
                and data_offset < max(hash_end, hash_offset + SUPERBLOCK_SIZE)
            ):
                raise ConfigError(
                    f"verity hash region [{hash_offset}, {hash_end}) overlaps the data "
                    f"region [{data_offset}, {data_end}) of {os.fspath(data_path)!r}"
                )
            tree = compute_tree(
                data_path,
                params,
                data_offset=data_offset,
                workers=workers,
                parallel_min_bytes=parallel_min_bytes,
            )
            sb = VeritySuperblock(params, uuid or uuidlib.uuid4()) if superblock else None
            region = tree.hash_region(sb, hash_offset)
            view = memoryview(region)
            written = 0
            while written < len(view):
                written += os.pwrite(hash_fd, view[written:], hash_offset + written)
            os.fsync(hash_fd)
        finally:
            os.close(hash_fd)
    finally:
        os.close(data_fd)
    return VerityFormatResult(params, tree.root_hash, sb, hash_offset, start, hash_end)


# --- full verification -------------------------------------------------------------------


def _resolve_params(
    params: VerityParams | None, hash_path: PathLike, hash_offset: int, superblock: bool
) -> VerityParams:
    if params is not None:
        return params
    if not superblock:
        raise ConfigError("verity parameters are required when there is no superblock")
    return read_superblock(hash_path, hash_offset).params


def _check_data_size(params: VerityParams, data_size: int | None, from_superblock: bool) -> None:
    """Refuse parameters covering other than ``data_size`` bytes (a shrunk superblock)."""
    if data_size is None or data_size == params.data_size:
        return
    message = (
        f"verity parameters cover {params.data_size} bytes "
        f"({params.data_blocks} blocks of {params.data_block_size}), expected {data_size}"
    )
    if from_superblock:
        raise VerificationError(f"{message}: the superblock does not describe this volume")
    raise ConfigError(message)


def _check_root_length(params: VerityParams, root_hash: bytes) -> None:
    if len(root_hash) != params.digest_size:
        raise FormatError(
            f"verity root hash is {len(root_hash)} bytes (expected {params.digest_size} "
            f"for {params.algorithm.value})"
        )


def verify_region(
    data_path: PathLike,
    hash_path: PathLike,
    root_hash: bytes,
    params: VerityParams | None = None,
    *,
    data_offset: int = 0,
    hash_offset: int = 0,
    superblock: bool = True,
    data_size: int | None = None,
    workers: int | None = None,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES,
) -> VerityParams:
    """Verify every hash and data block against ``root_hash``; return the params used.

    ``params`` default to the superblock at ``hash_offset``; when given (for example from
    signed metadata) the superblock is not trusted and only moves the tree's start.
    The root hash does not bind the number of data blocks a superblock claims (a smaller
    count can still verify, covering a prefix), so a caller trusting the superblock
    should pass the expected ``data_size``. Raises :class:`DigestMismatchError` naming
    the first bad block (hash blocks first, top level first, then data blocks),
    :class:`FormatError` for short files.
    """
    from_superblock = params is None
    params = _resolve_params(params, hash_path, hash_offset, superblock)
    _check_data_size(params, data_size, from_superblock)
    _check_root_length(params, root_hash)
    geo = params.geometry()
    hbs = params.hash_block_size
    start = hash_start_block(hash_offset, hbs, superblock=superblock)
    tree_size = geo.tree_blocks * hbs
    if tree_size > VERITY_MAX_TREE_SIZE:
        raise LimitError(f"verity tree is {tree_size} bytes (limit {VERITY_MAX_TREE_SIZE})")
    data_fd = _open(data_path, "data")
    try:
        _need(data_fd, data_path, "data", data_offset + params.data_size)
        if geo.levels == 0:
            block = _pread_full(data_fd, params.data_block_size, data_offset)
            check_root_block(params, block, root_hash)
            return params
    finally:
        os.close(data_fd)
    hash_fd = _open(hash_path, "hash")
    try:
        _need(hash_fd, hash_path, "hash", start * hbs + tree_size)
        tree = _pread_full(hash_fd, tree_size, start * hbs)
    finally:
        os.close(hash_fd)
    verify_hash_tree(params, tree, root_hash, start)
    computed = hash_data_region(
        data_path,
        params,
        data_offset=data_offset,
        workers=workers,
        parallel_min_bytes=parallel_min_bytes,
    )
    stored = memoryview(tree)[geo.level_offsets[0] * hbs :]
    check_data_digests(params, stored, computed, params.data_blocks)
    return params


# --- lazy verified reads -----------------------------------------------------------------


class VerityReader(io.RawIOBase):
    """A read-only file over a verity-protected data region; every byte returned is verified.

    Data and hash may be the same file at different offsets. ``params`` default to the
    superblock; pass them (e.g. from signed metadata) to not trust it, or pass the
    expected ``data_size`` so a superblock claiming fewer blocks is refused. Verified hash
    blocks are cached (LRU, ``cache_blocks``); a failure raises
    :class:`DigestMismatchError` naming the data or hash block and level.
    """

    def __init__(
        self,
        data_path: PathLike,
        hash_path: PathLike,
        root_hash: bytes,
        params: VerityParams | None = None,
        *,
        data_offset: int = 0,
        hash_offset: int = 0,
        data_size: int | None = None,
        superblock: bool = True,
        cache_blocks: int = DEFAULT_CACHE_BLOCKS,
    ) -> None:
        super().__init__()
        self._data_fd = -1
        self._hash_fd = -1
        self.params = _resolve_params(params, hash_path, hash_offset, superblock)
        _check_root_length(self.params, root_hash)
        _check_data_size(self.params, data_size, params is None)
        self.root_hash = bytes(root_hash)
        self._geo = self.params.geometry()
        self._hasher = VerityHasher(self.params)
        self._start = hash_start_block(
            hash_offset, self.params.hash_block_size, superblock=superblock
        )
        self._data_offset = data_offset
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_max = max(self._geo.levels + 1, cache_blocks)
        self._last: tuple[int, bytes] | None = None
        self._pos = 0
        self._data_fd = _open(data_path, "data")
        self._hash_fd = _open(hash_path, "hash")
        _need(self._data_fd, data_path, "data", data_offset + self.params.data_size)
        hash_end = (self._start + self._geo.tree_blocks) * self.params.hash_block_size
        _need(self._hash_fd, hash_path, "hash", hash_end)

    # file protocol
    @property
    def size(self) -> int:
        """Bytes in the data region."""
        return self.params.data_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed verity reader")
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed verity reader")
        out = memoryview(buffer).cast("B")
        data = self.pread(len(out), self._pos)
        out[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        """The rest of the data region, verified, in one pass (not 8 KiB at a time)."""
        if self.closed:
            raise ValueError("I/O operation on closed verity reader")
        data = self.pread(max(0, self.size - self._pos), self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        for name in ("_data_fd", "_hash_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        super().close()

    # verified access
    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` verified bytes at ``offset`` (short only at the end of the data)."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        dbs = self.params.data_block_size
        first, last = offset // dbs, (end - 1) // dbs
        parts = [chunk for _, chunk in self._verified_blocks(first, last - first + 1)]
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        skip = offset - first * dbs
        return joined[skip : skip + end - offset]

    def _verified_blocks(self, first: int, count: int) -> Iterator[tuple[int, bytes]]:
        dbs = self.params.data_block_size
        if count == 1 and self._last is not None and self._last[0] == first:
            yield self._last
            return
        step = max(1, READ_CHUNK // dbs)
        for base in range(first, first + count, step):
            n = min(step, first + count - base)
            raw = _pread_full(self._data_fd, n * dbs, self._data_offset + base * dbs)
            if len(raw) != n * dbs:
                raise FormatError(f"verity data file ended inside data block {base}")
            digests = self._hasher.digests(raw, dbs)
            for i, digest in enumerate(digests):
                block = base + i
                expected = self._expected_data_digest(block)
                if not hmac.compare_digest(digest, expected):
                    raise DigestMismatchError(
                        f"verity data block {block} is corrupted: expected digest "
                        f"{expected.hex()}, got {digest.hex()}",
                        area="data",
                        block=block,
                        level=None,
                    )
            chunk = raw
            self._last = (base + n - 1, raw[(n - 1) * dbs :])
            yield base, chunk

    def _expected_data_digest(self, block: int) -> bytes:
        if self._geo.levels == 0:
            return self.root_hash
        bits = self.params.fanout_bits
        hash_block = self._hash_block(0, block >> bits)
        return level_digest(self.params, hash_block, block & (self.params.fanout - 1))

    def _hash_block(self, level: int, index: int) -> bytes:
        hbs = self.params.hash_block_size
        number = self._start + self._geo.level_offsets[level] + index
        cached = self._cache.get(number)
        if cached is not None:
            self._cache.move_to_end(number)
            return cached
        raw = _pread_full(self._hash_fd, hbs, number * hbs)
        if len(raw) != hbs:
            raise FormatError(f"verity hash file ended inside hash block {number}")
        top = self._geo.levels - 1
        if level == top:
            expected = self.root_hash
        else:
            parent = self._hash_block(level + 1, index >> self.params.fanout_bits)
            expected = level_digest(self.params, parent, index & (self.params.fanout - 1))
        actual = self._hasher.digest(raw)
        if not hmac.compare_digest(actual, expected):
            what = "does not match the root hash" if level == top else "is corrupted"
            raise DigestMismatchError(
                f"verity hash block {number} (level {level}) {what}: expected digest "
                f"{expected.hex()}, got {actual.hex()}",
                area="hash",
                block=number,
                level=level,
            )
        self._cache[number] = raw
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)
        return raw
