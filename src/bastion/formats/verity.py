"""dm-verity, byte-compatible with veritysetup and the kernel: superblock, hash tree, root hash.

Pure codec (blocks in, bytes out; no I/O). What it models, following cryptsetup
``lib/verity`` and the kernel's ``verity.rst``:

* :class:`VerityParams`: hash format (1 = normal, 0 = Chrome OS), algorithm, data and
  hash block sizes (powers of two, 512..65536), number of data blocks, salt (0..256
  bytes). Validated on construction; bad values raise :class:`FormatError`.
* :class:`VeritySuperblock`: the 512-byte version-1 header (``"verity\\0\\0"``, all
  integers little-endian) that veritysetup writes at the hash offset.
* The tree: level 0 holds the digests of the data blocks, each higher level the digests
  of the hash blocks below, until one block remains. Format 1 hashes ``H(salt || block)``
  and pads each digest to a power of two; format 0 hashes ``H(block || salt)`` and packs
  digests back to back. Each hash block holds ``2**floor(log2(hbs / digest))`` digests and
  a zero tail. On disk the top level comes first and level 0 last. The root hash is the
  digest of the top hash block; with one data block there is no tree and the root hash
  is the digest of that block.
* Checks that raise :class:`DigestMismatchError` naming the area (``"data"`` or
  ``"hash"``), the block and the level: data blocks are numbered from the start of the
  data region, hash blocks in hash-block units from the start of the hash file.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from bastion.errors import DigestMismatchError, FormatError, LimitError
from bastion.limits import (
    VERITY_MAX_BLOCK_SIZE,
    VERITY_MAX_DATA_BLOCKS,
    VERITY_MAX_LEVELS,
    VERITY_MAX_SALT_SIZE,
    VERITY_MIN_BLOCK_SIZE,
)

SUPERBLOCK_SIZE = 512
SIGNATURE = b"verity\x00\x00"
SUPERBLOCK_VERSION = 1
_ALG_FIELD = 32


class HashFormat(IntEnum):
    """The ``hash_type`` of the superblock and the kernel table."""

    CHROMEOS = 0  # H(block || salt), digests packed back to back
    NORMAL = 1  # H(salt || block), digests padded to a power of two


class HashAlgorithm(StrEnum):
    """Digest algorithms bastion accepts, spelled as veritysetup and the kernel spell them."""

    SHA1 = "sha1"
    SHA224 = "sha224"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def digest_size(self) -> int:
        """Bytes in one digest."""
        return hashlib.new(self.value).digest_size

    @classmethod
    def parse(cls, name: str) -> HashAlgorithm:
        """The algorithm called ``name`` (lower case) or FormatError naming the choices."""
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(a.value for a in cls)
            raise FormatError(
                f"verity hash algorithm {name!r} is not supported (expected one of {choices})"
            ) from None


def _check_block_size(what: str, size: int) -> None:
    if size < VERITY_MIN_BLOCK_SIZE or size > VERITY_MAX_BLOCK_SIZE or size & (size - 1):
        raise FormatError(
            f"verity {what} block size {size} is invalid "
            f"(expected a power of two from {VERITY_MIN_BLOCK_SIZE} to {VERITY_MAX_BLOCK_SIZE})"
        )


def _bits_down(value: int) -> int:
    return value.bit_length() - 1


@dataclass(frozen=True, slots=True)
class VerityGeometry:
    """Shape of the tree: blocks per level (level 0 first) and where each level sits.

    ``level_offsets[i]`` is the index, in hash blocks from the start of the tree, of the
    first block of level ``i`` (the top level is at offset 0).
    """

    levels: int
    level_blocks: tuple[int, ...]
    level_offsets: tuple[int, ...]

    @property
    def tree_blocks(self) -> int:
        """Hash blocks in the whole tree."""
        return sum(self.level_blocks)


@dataclass(frozen=True, slots=True)
class VerityParams:
    """Everything that determines a verity tree except the data itself."""

    data_blocks: int
    algorithm: HashAlgorithm = HashAlgorithm.SHA256
    data_block_size: int = 4096
    hash_block_size: int = 4096
    salt: bytes = b""
    hash_format: HashFormat = HashFormat.NORMAL

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, HashAlgorithm):
            object.__setattr__(self, "algorithm", HashAlgorithm.parse(str(self.algorithm)))
        if self.hash_format not in (0, 1):
            raise FormatError(f"verity hash format {self.hash_format} is invalid (expected 0 or 1)")
        object.__setattr__(self, "hash_format", HashFormat(self.hash_format))
        _check_block_size("data", self.data_block_size)
        _check_block_size("hash", self.hash_block_size)
        if len(self.salt) > VERITY_MAX_SALT_SIZE:
            raise LimitError(
                f"verity salt is {len(self.salt)} bytes (expected at most {VERITY_MAX_SALT_SIZE})"
            )
        if self.data_blocks < 1:
            raise FormatError(f"verity data blocks is {self.data_blocks} (expected at least 1)")
        if self.data_blocks > VERITY_MAX_DATA_BLOCKS:
            raise LimitError(
                f"verity data blocks is {self.data_blocks} "
                f"(expected at most {VERITY_MAX_DATA_BLOCKS})"
            )
        if self.algorithm.digest_size > self.hash_block_size // 2:
            raise FormatError(
                f"verity hash block size {self.hash_block_size} is too small for "
                f"{self.algorithm.value} (expected at least two digests per block)"
            )

    @classmethod
    def for_data_size(
        cls,
        data_size: int,
        *,
        algorithm: HashAlgorithm = HashAlgorithm.SHA256,
        data_block_size: int = 4096,
        hash_block_size: int = 4096,
        salt: bytes = b"",
        hash_format: HashFormat = HashFormat.NORMAL,
    ) -> VerityParams:
        """Params covering a data region of ``data_size`` bytes (a whole number of blocks)."""
        _check_block_size("data", data_block_size)
        if data_size % data_block_size:
            raise FormatError(
                f"verity data region is {data_size} bytes, not a multiple of the data block "
                f"size {data_block_size}"
            )
        return cls(
            data_blocks=data_size // data_block_size,
            algorithm=algorithm,
            data_block_size=data_block_size,
            hash_block_size=hash_block_size,
            salt=salt,
            hash_format=hash_format,
        )

    @property
    def digest_size(self) -> int:
        """Bytes in one digest of the algorithm."""
        return self.algorithm.digest_size

    @property
    def digest_stride(self) -> int:
        """Bytes one digest takes in a hash block (padded to a power of two in format 1)."""
        if self.hash_format == HashFormat.CHROMEOS:
            return self.digest_size
        return 1 << (self.digest_size - 1).bit_length()

    @property
    def fanout_bits(self) -> int:
        """log2 of the number of digests per hash block."""
        return _bits_down(self.hash_block_size // self.digest_size)

    @property
    def fanout(self) -> int:
        """Digests per hash block."""
        return 1 << self.fanout_bits

    @property
    def data_size(self) -> int:
        """Bytes of data the tree covers."""
        return self.data_blocks * self.data_block_size

    def geometry(self) -> VerityGeometry:
        """Levels and their sizes, as cryptsetup's ``hash_levels`` computes them."""
        bits = self.fanout_bits
        levels = 0
        while bits * levels < 64 and (self.data_blocks - 1) >> (bits * levels):
            levels += 1
        if levels > VERITY_MAX_LEVELS:
            raise LimitError(f"verity tree has {levels} levels (limit {VERITY_MAX_LEVELS})")
        sizes = tuple(
            (self.data_blocks + (1 << (bits * (i + 1))) - 1) >> (bits * (i + 1))
            for i in range(levels)
        )
        offsets = [0] * levels
        position = 0
        for i in range(levels - 1, -1, -1):
            offsets[i] = position
            position += sizes[i]
        return VerityGeometry(levels, sizes, tuple(offsets))

    def tree_size(self) -> int:
        """Bytes of the hash tree (without superblock)."""
        return self.geometry().tree_blocks * self.hash_block_size


def hash_start_block(hash_offset: int, hash_block_size: int, *, superblock: bool = True) -> int:
    """First block of the tree in the hash file, in hash-block units (cryptsetup's rule)."""
    if hash_offset < 0 or hash_offset % 512:
        raise FormatError(f"verity hash offset {hash_offset} is not a multiple of 512")
    if not superblock:
        if hash_offset % hash_block_size:
            raise FormatError(
                f"verity hash offset {hash_offset} without a superblock must be a multiple "
                f"of the hash block size {hash_block_size}"
            )
        return hash_offset // hash_block_size
    return (hash_offset + SUPERBLOCK_SIZE + hash_block_size - 1) // hash_block_size


@dataclass(frozen=True, slots=True)
class VeritySuperblock:
    """The version-1 superblock veritysetup writes at the hash offset."""

    params: VerityParams
    uuid: uuidlib.UUID

    @classmethod
    def parse(cls, data: bytes) -> VeritySuperblock:
        """Parse the first 512 bytes of ``data``; FormatError for anything not a valid header."""
        if len(data) < SUPERBLOCK_SIZE:
            raise FormatError(
                f"verity superblock is {len(data)} bytes (expected {SUPERBLOCK_SIZE})"
            )
        raw = bytes(data[:SUPERBLOCK_SIZE])
        if raw[:8] != SIGNATURE:
            raise FormatError(
                f"verity superblock signature is {raw[:8]!r} (expected {SIGNATURE!r})"
            )
        version = int.from_bytes(raw[8:12], "little")
        if version != SUPERBLOCK_VERSION:
            raise FormatError(f"verity superblock version is {version} (expected 1)")
        hash_type = int.from_bytes(raw[12:16], "little")
        if hash_type > 1:
            raise FormatError(f"verity hash type is {hash_type} (expected 0 or 1)")
        alg_field = raw[32 : 32 + _ALG_FIELD]
        name, nul, tail = alg_field.partition(b"\x00")
        if not nul or tail.strip(b"\x00"):
            raise FormatError("verity superblock algorithm field is not a NUL-terminated name")
        try:
            alg_name = name.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"verity hash algorithm {name!r} is not ASCII") from None
        salt_size = int.from_bytes(raw[80:82], "little")
        if salt_size > VERITY_MAX_SALT_SIZE:
            raise LimitError(
                f"verity salt size is {salt_size} (expected at most {VERITY_MAX_SALT_SIZE})"
            )
        if any(raw[82:88]) or any(raw[88 + salt_size : 344]) or any(raw[344:]):
            raise FormatError("verity superblock padding is not zero")
        params = VerityParams(
            data_blocks=int.from_bytes(raw[72:80], "little"),
            algorithm=HashAlgorithm.parse(alg_name),
            data_block_size=int.from_bytes(raw[64:68], "little"),
            hash_block_size=int.from_bytes(raw[68:72], "little"),
            salt=raw[88 : 88 + salt_size],
            hash_format=HashFormat(hash_type),
        )
        return cls(params=params, uuid=uuidlib.UUID(bytes=raw[16:32]))

    def to_bytes(self) -> bytes:
        """The 512-byte superblock."""
        p = self.params
        out = bytearray(SUPERBLOCK_SIZE)
        out[0:8] = SIGNATURE
        out[8:12] = SUPERBLOCK_VERSION.to_bytes(4, "little")
        out[12:16] = int(p.hash_format).to_bytes(4, "little")
        out[16:32] = self.uuid.bytes
        name = p.algorithm.value.encode("ascii")
        out[32 : 32 + len(name)] = name
        out[64:68] = p.data_block_size.to_bytes(4, "little")
        out[68:72] = p.hash_block_size.to_bytes(4, "little")
        out[72:80] = p.data_blocks.to_bytes(8, "little")
        out[80:82] = len(p.salt).to_bytes(2, "little")
        out[88 : 88 + len(p.salt)] = p.salt
        return bytes(out)


class VerityHasher:
    """Salted block digests and their packing into hash blocks, for one set of params."""

    __slots__ = ("_base", "_name", "_normal", "_pad", "_salt", "params")

    def __init__(self, params: VerityParams) -> None:
        self.params = params
        self._name = params.algorithm.value
        self._salt = params.salt
        self._normal = params.hash_format == HashFormat.NORMAL
        self._base: Any = hashlib.new(self._name, self._salt if self._normal else b"")
        self._pad = b"\x00" * (params.digest_stride - params.digest_size)

    def digest(self, block: bytes | memoryview) -> bytes:
        """The digest of one block (data or hash) as the tree stores it (unpadded)."""
        h = self._base.copy()
        h.update(block)
        if not self._normal:
            h.update(self._salt)
        digest: bytes = h.digest()
        return digest

    def digests(self, buffer: bytes | bytearray | memoryview, block_size: int) -> list[bytes]:
        """Digests of every ``block_size`` block in ``buffer`` (a whole number of blocks)."""
        view = memoryview(buffer).cast("B")
        if len(view) % block_size:
            raise FormatError(
                f"verity buffer of {len(view)} bytes is not a multiple of {block_size}"
            )
        copy = self._base.copy
        out: list[bytes] = []
        append = out.append
        if self._normal:
            for off in range(0, len(view), block_size):
                h = copy()
                h.update(view[off : off + block_size])
                append(h.digest())
        else:
            salt = self._salt
            for off in range(0, len(view), block_size):
                h = copy()
                h.update(view[off : off + block_size])
                h.update(salt)
                append(h.digest())
        return out

    def pack(self, digests: Sequence[bytes]) -> bytes:
        """Pack digests into whole hash blocks (padding each digest, zero-filling tails)."""
        p = self.params
        fanout, hbs = p.fanout, p.hash_block_size
        pad = self._pad
        chunks: list[bytes] = []
        for start in range(0, len(digests), fanout):
            group = digests[start : start + fanout]
            block = (pad.join(group) + pad) if pad else b"".join(group)
            chunks.append(block.ljust(hbs, b"\x00"))
        return b"".join(chunks)

    def hash_blocks(self, buffer: bytes | bytearray | memoryview, block_size: int) -> bytes:
        """Level bytes for the blocks in ``buffer``: ``digests`` then ``pack``."""
        return self.pack(self.digests(buffer, block_size))


@dataclass(frozen=True, slots=True)
class VerityTree:
    """A computed tree: the root hash and every level (index 0 = level 0)."""

    params: VerityParams
    root_hash: bytes
    levels: tuple[bytes, ...]

    @property
    def hash_area(self) -> bytes:
        """The tree as stored on disk: top level first, level 0 last."""
        return b"".join(reversed(self.levels))

    def hash_region(self, superblock: VeritySuperblock | None, hash_offset: int = 0) -> bytes:
        """Bytes to write at ``hash_offset``: superblock, zero gap, then the tree."""
        hbs = self.params.hash_block_size
        start = hash_start_block(hash_offset, hbs, superblock=superblock is not None)
        head = superblock.to_bytes() if superblock is not None else b""
        gap = start * hbs - hash_offset - len(head)
        return head + b"\x00" * gap + self.hash_area


def build_upper_levels(params: VerityParams, level0: bytes) -> VerityTree:
    """Given level 0 (packed hash blocks), build the levels above it and the root hash."""
    geo = params.geometry()
    hbs = params.hash_block_size
    if geo.levels == 0:
        raise FormatError("a one-block verity tree has no level 0; use build_tree")
    if len(level0) != geo.level_blocks[0] * hbs:
        raise FormatError(
            f"verity level 0 is {len(level0)} bytes (expected {geo.level_blocks[0] * hbs})"
        )
    hasher = VerityHasher(params)
    levels = [level0]
    for _ in range(1, geo.levels):
        levels.append(hasher.hash_blocks(levels[-1], hbs))
    return VerityTree(params, hasher.digest(levels[-1]), tuple(levels))


def build_tree(params: VerityParams, blocks: Iterable[bytes | memoryview]) -> VerityTree:
    """Build the whole tree over ``blocks`` (exactly ``params.data_blocks`` full blocks).

    Blocks may be single data blocks or any buffers holding a whole number of them.
    """
    hasher = VerityHasher(params)
    dbs = params.data_block_size
    digests: list[bytes] = []
    for chunk in blocks:
        digests.extend(hasher.digests(chunk, dbs))
        if len(digests) > params.data_blocks:
            break
    if len(digests) != params.data_blocks:
        raise FormatError(
            f"verity data has {len(digests)} blocks of {dbs} bytes (expected {params.data_blocks})"
        )
    if params.data_blocks == 1:
        return VerityTree(params, digests[0], ())
    return build_upper_levels(params, hasher.pack(digests))


def level_digest(params: VerityParams, level_bytes: bytes | memoryview, index: int) -> bytes:
    """The ``index``-th digest stored in a level (or hash block) ``level_bytes``."""
    p = params
    block, slot = divmod(index, p.fanout)
    start = block * p.hash_block_size + slot * p.digest_stride
    return bytes(level_bytes[start : start + p.digest_size])


def verify_hash_tree(
    params: VerityParams, tree_area: bytes | memoryview, root_hash: bytes, start_block: int
) -> None:
    """Check every stored hash block top-down from ``root_hash``; raise on the first bad one.

    ``tree_area`` is the stored tree (top level first); ``start_block`` is where it
    begins in the hash file, so the error names the hash file's block number.
    """
    geo = params.geometry()
    hbs = params.hash_block_size
    if len(root_hash) != params.digest_size:
        raise FormatError(
            f"verity root hash is {len(root_hash)} bytes (expected {params.digest_size} "
            f"for {params.algorithm.value})"
        )
    if len(tree_area) < geo.tree_blocks * hbs:
        raise FormatError(
            f"verity hash area is {len(tree_area)} bytes (expected {geo.tree_blocks * hbs})"
        )
    if geo.levels == 0:
        return
    hasher = VerityHasher(params)
    view = memoryview(tree_area)
    top = geo.levels - 1
    top_block = view[geo.level_offsets[top] * hbs : (geo.level_offsets[top] + 1) * hbs]
    actual = hasher.digest(top_block)
    if not hmac.compare_digest(actual, root_hash):
        raise DigestMismatchError(
            f"verity hash block {start_block + geo.level_offsets[top]} (level {top}, top) does "
            f"not match the root hash: expected {root_hash.hex()}, got {actual.hex()}",
            area="hash",
            block=start_block + geo.level_offsets[top],
            level=top,
        )
    for level in range(top - 1, -1, -1):
        parent = view[geo.level_offsets[level + 1] * hbs :]
        base = geo.level_offsets[level]
        here = view[base * hbs : (base + geo.level_blocks[level]) * hbs]
        computed = hasher.digests(here, hbs)
        for index, digest in enumerate(computed):
            expected = level_digest(params, parent, index)
            if digest != expected:
                raise DigestMismatchError(
                    f"verity hash block {start_block + base + index} (level {level}) is "
                    f"corrupted: expected digest {expected.hex()}, got {digest.hex()}",
                    area="hash",
                    block=start_block + base + index,
                    level=level,
                )


def first_mismatch(
    params: VerityParams,
    expected: bytes | memoryview,
    computed: bytes | memoryview,
    count: int,
) -> int | None:
    """Index of the first of ``count`` digest slots where two packed levels differ, or None."""
    hbs = params.hash_block_size
    used = -(-count // params.fanout) * hbs
    if bytes(expected[:used]) == bytes(computed[:used]):
        return None
    for index in range(count):
        if level_digest(params, expected, index) != level_digest(params, computed, index):
            return index
    return None


def check_data_digests(
    params: VerityParams,
    stored_level0: bytes | memoryview,
    computed_level0: bytes | memoryview,
    count: int,
    first_block: int = 0,
) -> None:
    """Compare ``count`` recomputed level-0 digests with the trusted stored ones.

    Raises :class:`DigestMismatchError` naming the data block; ``first_block`` is the
    data block number both buffers start at (a multiple of the fanout).
    """
    index = first_mismatch(params, stored_level0, computed_level0, count)
    if index is None:
        return
    block = first_block + index
    expected = level_digest(params, stored_level0, index)
    actual = level_digest(params, computed_level0, index)
    raise DigestMismatchError(
        f"verity data block {block} is corrupted: expected digest {expected.hex()}, "
        f"got {actual.hex()}",
        area="data",
        block=block,
        level=None,
    )


def check_root_block(params: VerityParams, block: bytes | memoryview, root_hash: bytes) -> None:
    """With one data block the root hash is that block's digest: check it."""
    actual = VerityHasher(params).digest(block)
    if not hmac.compare_digest(actual, root_hash):
        raise DigestMismatchError(
            f"verity data block 0 does not match the root hash: expected {root_hash.hex()}, "
            f"got {actual.hex()}",
            area="data",
            block=0,
            level=None,
        )


def dm_table(
    params: VerityParams,
    data_device: str,
    hash_device: str,
    root_hash: bytes,
    start_block: int,
) -> str:
    """The kernel's dm-verity table line for these parameters (no optional arguments)."""
    salt = params.salt.hex() or "-"
    return (
        f"0 {params.data_size // 512} verity {int(params.hash_format)} {data_device} "
        f"{hash_device} {params.data_block_size} {params.hash_block_size} "
        f"{params.data_blocks} {start_block} {params.algorithm.value} {root_hash.hex()} {salt}"
    )
