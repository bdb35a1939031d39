"""Reach a bundle (file or HTTP Range) and read its payload blocks verified before use.

:func:`open_bundle` does what must happen before one payload byte is trusted, reading
only the tail of the bundle: the 8-byte trailer, the CMS signature over the manifest
(:func:`bastion.trust.bundle.verify_signature`, chained to the keyring), the manifest
(format ``verity``), then the dm-verity tree (``verity-size`` bytes before the
signature), checked top-down against the signed root hash. Its level 0 is then the
signed digest of every 4096-byte payload block: :meth:`OpenedBundle.fetch` reads a run
of payload blocks and raises :class:`~bastion.errors.DigestMismatchError` naming the
first block (numbered from the start of the bundle, as ``rauc extract`` and
:mod:`bastion.trust.bundle` number them) whose digest is not the signed one, before the
caller can write any of it. The level-0 digests past the last payload block must be the
tree's zero padding, so a truncated payload is refused too.

Sources (:class:`BundleSource`) read exact byte ranges and count what they read:
:class:`FileSource` (a path) and :class:`HttpSource` (a URL, through the one HTTP
client's Range requests, io/http.py). A short read is a :class:`~bastion.errors.TransportError`
(HTTP) or :class:`~bastion.errors.FormatError` (file): the install stops, its journal
keeps what was written, and the next run resumes.
"""

from __future__ import annotations

import datetime as dt
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509

from bastion.device.update.release import Release, release_of
from bastion.errors import DigestMismatchError, FormatError, LimitError, SignatureError
from bastion.formats import verity
from bastion.formats.bundle import TRAILER_SIZE, parse_trailer, split_verity
from bastion.formats.raucm import FORMAT_VERITY, Manifest, parse_manifest
from bastion.io.http import HttpClient
from bastion.limits import BUNDLE_BLOCK_SIZE, UPDATE_RANGE_MAX_SIZE, UPDATE_TREE_MAX_SIZE
from bastion.trust.bundle import verify_signature

BLOCK = BUNDLE_BLOCK_SIZE


class BundleSource(Protocol):
    """Exact byte ranges of one bundle."""

    @property
    def name(self) -> str: ...

    @property
    def bytes_read(self) -> int: ...

    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class FileSource:
    """A bundle file on a local path (a USB stick, a download folder)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            from bastion.errors import NotFoundError

            raise NotFoundError(f"bundle {os.fspath(path)!r} does not exist") from exc
        self.bytes_read = 0

    @property
    def name(self) -> str:
        return str(self.path)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        if length > UPDATE_RANGE_MAX_SIZE:
            raise LimitError(f"bundle read of {length} bytes (limit {UPDATE_RANGE_MAX_SIZE})")
        data = os.pread(self._fd, length, offset)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise FormatError(
                    f"bundle {self.path} is truncated: {len(data)} of {length} bytes at {offset}"
                )
            data += more
        self.bytes_read += length
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class HttpSource:
    """A bundle at an ``https://`` URL (``http://`` on loopback), read by Range requests."""

    def __init__(self, url: str, *, ca_file: str | None = None, client: HttpClient | None = None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise FormatError(f"bundle URL {url!r} is not an http(s) URL without a query")
        self.url = url
        self._path = parts.path or "/"
        self._client = client or HttpClient(
            f"{parts.scheme}://{parts.netloc}", ca_file=ca_file, max_response=UPDATE_RANGE_MAX_SIZE
        )
        self._size: int | None = None
        self.bytes_read = 0

    @property
    def name(self) -> str:
        return self.url

    def size(self) -> int:
        if self._size is None:
            self._size = self._client.size_of(self._path)
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        data = self._client.get_range(self._path, offset, length)
        self.bytes_read += length
        return data

    def close(self) -> None:
        self._client.close()


def open_source(location: str, *, ca_file: str | None = None) -> BundleSource:
    """A source for a path or an http(s) URL."""
    if location.startswith(("http://", "https://")):
        return HttpSource(location, ca_file=ca_file)
    return FileSource(location)


def read_range(source: BundleSource, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` in reads of at most UPDATE_RANGE_MAX_SIZE."""
    parts: list[bytes] = []
    done = 0
    while done < length:
        step = min(UPDATE_RANGE_MAX_SIZE, length - done)
        parts.append(source.read(offset + done, step))
        done += step
    return b"".join(parts)


@dataclass(frozen=True)
class OpenedBundle:
    """A bundle whose signature and verity tree verified; payload blocks not yet read."""

    source: BundleSource
    manifest: Manifest
    release: Release
    signer: x509.Certificate
    params: verity.VerityParams
    digests: tuple[bytes, ...]  # the signed level-0 digest of each payload block
    payload_size: int

    @property
    def bundle_id(self) -> str:
        """The signed verity root hash: what the journal and the slot records name."""
        return self.release.verity_hash

    @property
    def blocks(self) -> int:
        return self.payload_size // BLOCK

    def digest(self, block: int) -> bytes:
        """The signed level-0 digest of payload block ``block``."""
        if not 0 <= block < self.blocks:
            raise FormatError(f"payload block {block} out of 0..{self.blocks - 1}")
        return self.digests[block]

    def hasher(self) -> verity.VerityHasher:
        return verity.VerityHasher(self.params)

    def check(self, block: int, data: bytes | memoryview, hasher: verity.VerityHasher) -> bool:
        """True when ``data`` is payload block ``block`` as signed."""
        return hasher.digest(data) == self.digest(block)

    def fetch(self, first: int, count: int) -> bytes:
        """Payload blocks ``[first, first+count)``, each checked before it is returned."""
        if count <= 0 or first < 0 or first + count > self.blocks:
            raise FormatError(f"payload blocks [{first}, +{count}) out of 0..{self.blocks}")
        data = read_range(self.source, first * BLOCK, count * BLOCK)
        computed = self.hasher().digests(data, BLOCK)
        if computed == list(self.digests[first : first + count]):
            return data
        for i, actual in enumerate(computed):
            block = first + i
            expected = self.digests[block]
            if actual != expected:
                raise DigestMismatchError(
                    f"bundle {self.source.name}: payload block {block} does not match its "
                    f"signed verity digest: expected {expected.hex()}, got {actual.hex()}; "
                    "nothing of it was written",
                    area="data",
                    block=block,
                    level=None,
                )
        return data


def open_bundle(
    source: BundleSource,
    keyring: Sequence[x509.Certificate],
    *,
    now: dt.datetime | None = None,
) -> OpenedBundle:
    """Verify the signature, manifest and verity tree of ``source`` (raises on failure)."""
    size = source.size()
    if size < TRAILER_SIZE:
        raise FormatError(f"bundle {source.name} is {size} bytes: truncated")
    trailer = parse_trailer(size, source.read(size - TRAILER_SIZE, TRAILER_SIZE))
    sig = source.read(trailer.signature_offset, trailer.signature_size)
    signed = verify_signature(sig, keyring, now=now)
    manifest = parse_manifest(signed.manifest_bytes)
    if manifest.bundle_format != FORMAT_VERITY or not manifest.has_verity:
        raise SignatureError(
            f"bundle {source.name} manifest format is {manifest.bundle_format!r} without "
            "verity metadata (bastion installs verity bundles only)"
        )
    assert manifest.verity_size is not None and manifest.verity_hash and manifest.verity_salt
    layout = split_verity(trailer.signed_size, manifest.verity_size)
    if layout.tree_size > UPDATE_TREE_MAX_SIZE:
        raise LimitError(
            f"bundle verity tree is {layout.tree_size} bytes (limit {UPDATE_TREE_MAX_SIZE})"
        )
    params = verity.VerityParams(
        data_blocks=layout.data_blocks,
        salt=bytes.fromhex(manifest.verity_salt),
        data_block_size=BLOCK,
        hash_block_size=BLOCK,
    )
    if layout.tree_size != params.tree_size():
        raise FormatError(
            f"bundle verity-size is {layout.tree_size} bytes, the tree over "
            f"{params.data_blocks} blocks takes {params.tree_size()}"
        )
    tree = read_range(source, layout.tree_offset, layout.tree_size)
    root_hash = bytes.fromhex(manifest.verity_hash)
    verity.verify_hash_tree(params, tree, root_hash, layout.data_blocks)
    geo = params.geometry()
    level0 = tree[
        geo.level_offsets[0] * BLOCK : (geo.level_offsets[0] + geo.level_blocks[0]) * BLOCK
    ]
    # the slots past the last data block are the tree's zero padding: the signed tree
    # covers exactly this many blocks, so a truncated payload cannot pass
    pad_start = params.data_blocks * params.digest_stride
    if any(level0[pad_start:]):
        raise DigestMismatchError(
            f"bundle {source.name}: the signed tree covers more than the "
            f"{params.data_blocks}-block payload (truncated bundle)",
            area="hash",
            block=layout.data_blocks + geo.level_offsets[0],
            level=0,
        )
    release = release_of(manifest, layout.payload_size)
    size, stride, fanout = params.digest_size, params.digest_stride, params.fanout
    offsets = ((i // fanout) * BLOCK + (i % fanout) * stride for i in range(params.data_blocks))
    digests = tuple(level0[o : o + size] for o in offsets)
    return OpenedBundle(
        source, manifest, release, signed.signer, params, digests, layout.payload_size
    )
