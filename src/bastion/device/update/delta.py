"""Adaptive delta: find the blocks a slot needs among the blocks the device already has.

A bastion bundle stores its ``rootfs`` image uncompressed and block-aligned in the
payload (ADR 0030), so image block ``k`` is payload block ``first + k`` and its signed
verity digest (the bundle's level 0) is ``H(salt || block)``. The device hashes, with
the same salt, every block of the running slot's root and of the target slot's root,
and looks each needed digest up: a block already in place is kept without a write, a
block found elsewhere is copied (read back and checked against the signed digest again
at copy time, since the target slot changes while it is written), and only the rest is
downloaded. Nothing is trusted because of where it was found: the match *is* the signed
digest. No index travels in the bundle and none is kept on the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bastion.formats import verity
from bastion.limits import BUNDLE_BLOCK_SIZE
from bastion.storage.luks2_io import BlockStorage

BLOCK = BUNDLE_BLOCK_SIZE
_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class Location:
    """A block on the device: which source (0 = target slot, 1 = running slot), where."""

    source: int
    offset: int


@dataclass
class BlockIndex:
    """Salted digest -> one place that block is found; plus the target's own digests."""

    where: dict[bytes, Location] = field(default_factory=dict)
    in_place: list[bytes] = field(default_factory=list)

    def find(self, digest: bytes) -> Location | None:
        return self.where.get(digest)


def hash_blocks(
    storage: BlockStorage | None, length: int, hasher: verity.VerityHasher
) -> Iterable[tuple[int, bytes]]:
    """(offset, digest) of each whole block in the first ``length`` bytes."""
    if storage is None:
        return
    length = min(length, storage.size) // BLOCK * BLOCK
    offset = 0
    while offset < length:
        step = min(_READ, length - offset)
        data = storage.read(offset, step)
        for i, digest in enumerate(hasher.digests(data, BLOCK)):
            yield offset + i * BLOCK, digest
        offset += step


def build_index(
    target: BlockStorage,
    target_length: int,
    running: BlockStorage | None,
    running_length: int,
    hasher: verity.VerityHasher,
) -> BlockIndex:
    """Index the target slot's first ``target_length`` bytes and the running slot's (the
    two are read and hashed in two threads: hashlib and pread release the GIL)."""
    index = BlockIndex()
    with ThreadPoolExecutor(max_workers=2) as pool:
        theirs = pool.submit(lambda: list(hash_blocks(running, running_length, hasher)))
        mine = list(hash_blocks(target, target_length, hasher))
        found = theirs.result() if running is not None else []
    for offset, digest in mine:
        index.in_place.append(digest)
        index.where.setdefault(digest, Location(0, offset))
    # prefer the running slot: it does not change while the target is written
    for offset, digest in found:
        index.where[digest] = Location(1, offset)
    return index
