"""A LUKS2 volume in userspace: format, open, keyslots, tokens, plaintext read/write.

``Luks2Volume`` works on a ``BlockStorage``: a whole file, a block device, or a byte
range (offset, size) inside a disk image (``FileRange``). It reads the header with
:func:`bastion.formats.luks2.choose_copy` (valid checksum, then higher seqid), unlocks
with a passphrase, a recovery key (also a passphrase) or a known volume key, and reads
and writes plaintext at any byte offset (read-modify-write of partial sectors) through
:class:`bastion.storage.luks2_xts.SectorCipher`.

Every header change is a *commit* in cryptsetup's order: seqid+1; for the primary then
the secondary copy, the binary header with a zeroed csum, the JSON area, the binary
header with its checksum, then a sync. Keyslot material goes to an unused area before the
commit that references it; an area is wiped only after the commit that drops it. A stop
after any single write therefore leaves a volume that opens with the old or the new
keyslots (tests stop a writer after each write).
"""

from __future__ import annotations

import mmap
import os
import uuid as uuid_mod
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from bastion import limits
from bastion.errors import (
    AuthError,
    BackendError,
    ConfigError,
    ConflictError,
    FormatError,
    NotFoundError,
)
from bastion.formats import luks2_keyslot as ksc
from bastion.formats.luks2 import (
    BINARY_HEADER_SIZE,
    DEFAULT_CIPHER,
    MAGIC_SECONDARY,
    VERSION,
    BinaryHeader,
    Config,
    Digest,
    HeaderArea,
    HeaderChoice,
    HeaderCopy,
    Keyslot,
    Metadata,
    Segment,
    Token,
    build_copy,
    choose_copy,
    primary_version,
)
from bastion.formats.signatures import PROBE_SIZE
from bastion.formats.signatures import probe as probe_signatures
from bastion.storage.luks2_io import BlockStorage, FileRange
from bastion.storage.luks2_kdf import (
    DEFAULT_ITER_TIME_MS,
    MINIMAL_KDF,
    KdfSpec,
    default_argon2_memory_kib,
    digest_iterations,
)
from bastion.storage.luks2_xts import SectorCipher

__all__ = [
    "DEFAULT_DATA_OFFSET",
    "DEFAULT_ITER_TIME_MS",
    "DEFAULT_METADATA_SIZE",
    "MINIMAL_KDF",
    "BlockStorage",
    "FileRange",
    "KdfSpec",
    "Luks2Volume",
    "default_argon2_memory_kib",
    "existing_content",
    "read_header",
]

KiB = 1024
MiB = 1024 * KiB
DEFAULT_DATA_OFFSET = 16 * MiB
DEFAULT_METADATA_SIZE = 16 * KiB
BULK_CHUNK = 8 * MiB
PARALLEL_MIN = 16 * MiB  # transfers at least this big are split across processes


# --- the volume ----------------------------------------------------------------------------


def _read_copy(storage: BlockStorage, offset: int, expect: HeaderCopy) -> HeaderArea:
    if offset + BINARY_HEADER_SIZE > storage.size:
        raise FormatError(f"LUKS2 {expect} header at {offset}: device too small")
    binary = BinaryHeader.parse(storage.read(offset, BINARY_HEADER_SIZE))
    if offset + binary.hdr_size > storage.size:
        raise FormatError(f"LUKS2 {expect} header at {offset}: truncated")
    return HeaderArea.parse(storage.read(offset, binary.hdr_size), expect=expect)


def read_header(storage: BlockStorage, *, repair: bool = False) -> HeaderChoice:
    """Read both copies and choose one, refusing where cryptsetup refuses (FormatError).

    As cryptsetup's ``LUKS2_disk_hdr_read``: a primary LUKS magic with another version
    (LUKS1) is never passed over for a secondary LUKS2 header; when one copy is damaged or
    older, the device is probed for foreign signatures (a filesystem, LVM2, swap, a
    partition table written over the volume) and the other copy is used only if there are
    none, or when the caller is repairing on request (``repair=True``, cryptsetup repair).
    The device must hold both copies and the keyslots area.
    """
    head = storage.read(0, min(PROBE_SIZE, storage.size)) if storage.size else b""
    version = primary_version(head)
    if version is not None and version != VERSION:
        kind = "a LUKS1 header" if version == 1 else f"a LUKS header of version {version}"
        raise FormatError(
            f"{kind} is at offset 0: bastion reads LUKS2 only and does not fall back to a "
            "secondary LUKS2 header behind it"
        )
    primary: HeaderArea | FormatError
    try:
        primary = _read_copy(storage, 0, HeaderCopy.PRIMARY)
    except FormatError as exc:
        primary = exc
    secondary: HeaderArea | FormatError = FormatError("no secondary header found")
    offsets = (
        [primary.binary.hdr_size]
        if isinstance(primary, HeaderArea)
        else list(limits.LUKS2_HDR_SIZES)
    )
    failures: list[FormatError] = []
    for off in offsets:
        try:
            secondary = _read_copy(storage, off, HeaderCopy.SECONDARY)
            break
        except FormatError as exc:
            failures.append(exc)
    else:  # report why the first (most likely) offset failed
        secondary = failures[0]
    choice = choose_copy(primary, secondary)
    winner = choice.winner
    needed = 2 * winner.binary.hdr_size + winner.metadata.config.keyslots_size
    if storage.size < needed:
        raise FormatError(
            f"LUKS2 device of {storage.size} bytes cannot hold its header copies and "
            f"keyslots area ({needed} bytes)"
        )
    recovery = (  # cryptsetup probes only when a copy is damaged or older
        isinstance(primary, FormatError)
        or isinstance(secondary, FormatError)
        or primary.binary.seqid != secondary.binary.seqid
    )
    if recovery and not repair:
        foreign = probe_signatures(head)
        if foreign:
            raise FormatError(
                f"LUKS2 {choice.stale} header copy needs recovery ({choice.reason}) and the "
                f"device also carries foreign signatures: {', '.join(foreign)}; refusing to "
                f"trust the {winner.binary.copy} copy over them (run `bastion luks repair` "
                "only if the LUKS2 volume is what you want to keep)"
            )
    return choice


def existing_content(storage: BlockStorage) -> tuple[str, ...]:
    """What a new header would overwrite: LUKS headers (either copy, any version) and the
    foreign signatures blkid would report, by name (empty for a blank device)."""
    head = storage.read(0, min(PROBE_SIZE, storage.size)) if storage.size else b""
    found: list[str] = []
    version = primary_version(head)
    if version is not None:
        found.append(f"LUKS{version} header")
    elif any(head[off : off + 6] == MAGIC_SECONDARY for off in limits.LUKS2_HDR_SIZES):
        found.append("LUKS2 secondary header")
    return (*found, *probe_signatures(head))


class Luks2Volume:
    """An open LUKS2 volume; locked until a passphrase, token secret or volume key is given."""

    def __init__(self, storage: BlockStorage, choice: HeaderChoice) -> None:
        self._storage = storage
        self._choice = choice
        self._binary = choice.winner.binary
        self._metadata = choice.winner.metadata
        self._volume_key: bytes | None = None
        self._cipher: SectorCipher | None = None
        self._salts = {HeaderCopy.PRIMARY: os.urandom(64), HeaderCopy.SECONDARY: os.urandom(64)}
        self._salts[self._binary.copy] = self._binary.salt

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, storage: BlockStorage, *, repair: bool = False) -> Luks2Volume:
        """Read the header; with ``repair`` (an explicit request, as cryptsetup repair)
        rewrite a damaged or stale copy from the winner even over foreign signatures."""
        volume = cls(storage, read_header(storage, repair=repair))
        if repair and volume.stale_copy is not None:
            volume.repair()
        return volume

    @classmethod
    def format(
        cls,
        storage: BlockStorage,
        passphrase: bytes,
        *,
        kdf: KdfSpec | None = None,
        sector_size: int = 4096,
        metadata_size: int = DEFAULT_METADATA_SIZE,
        keyslots_size: int | None = None,
        data_offset: int | None = None,
        volume_key: bytes | None = None,
        key_size: int = 64,
        label: str = "",
        subsystem: str = "",
        uuid: str | None = None,
    ) -> Luks2Volume:
        """Write a new LUKS2 header with keyslot 0 for ``passphrase``; returns it unlocked."""
        kdf = kdf or KdfSpec()
        if metadata_size not in limits.LUKS2_HDR_SIZES:
            raise ConfigError(
                f"--luks2-metadata-size {metadata_size}: expected one of "
                f"{', '.join(str(s) for s in limits.LUKS2_HDR_SIZES)}"
            )
        if sector_size not in (512, 1024, 2048, 4096):
            raise ConfigError(f"--sector-size {sector_size}: expected 512, 1024, 2048 or 4096")
        if key_size not in (32, 64):
            raise ConfigError(f"key size {key_size} bytes: expected 32 or 64 (aes-xts)")
        if data_offset is None:
            data_offset = DEFAULT_DATA_OFFSET
            if keyslots_size is not None:
                data_offset = max(data_offset, -(-(2 * metadata_size + keyslots_size) // MiB) * MiB)
        if keyslots_size is None:
            keyslots_size = data_offset - 2 * metadata_size
        if (
            keyslots_size <= 0
            or keyslots_size % 4096
            or keyslots_size > limits.LUKS2_MAX_KEYSLOTS_SIZE
        ):
            raise ConfigError(f"keyslots area size {keyslots_size} is not valid")
        if data_offset < 2 * metadata_size + keyslots_size or data_offset % sector_size:
            raise ConfigError(f"data offset {data_offset} overlaps the metadata or is unaligned")
        if storage.size < data_offset + sector_size:
            raise ConfigError(
                f"device of {storage.size} bytes is too small for a data offset of {data_offset}"
            )
        vk = volume_key if volume_key is not None else os.urandom(key_size)
        if len(vk) != key_size:
            raise ConfigError(f"volume key is {len(vk)} bytes, expected {key_size}")
        metadata = Metadata(
            keyslots={},
            tokens={},
            segments={0: Segment(data_offset, None, 0, DEFAULT_CIPHER, sector_size)},
            digests={},
            config=Config(metadata_size - BINARY_HEADER_SIZE, keyslots_size),
        )
        area_size = ksc.area_size_for(key_size)
        keyslot = Keyslot(
            key_size=key_size,
            area_offset=2 * metadata_size,
            area_size=area_size,
            area_encryption=DEFAULT_CIPHER,
            area_key_size=64,
            kdf=kdf.resolve(),
            af_hash="sha256",
        )
        digest = ksc.make_digest(
            vk, keyslots=(0,), segments=(0,), iterations=digest_iterations(kdf)
        )
        metadata = replace(metadata, keyslots={0: keyslot}, digests={0: digest})
        binary = BinaryHeader(
            copy=HeaderCopy.PRIMARY,
            hdr_size=metadata_size,
            seqid=0,
            label=label,
            checksum_alg="sha256",
            salt=os.urandom(64),
            uuid=uuid or str(uuid_mod.uuid4()),
            subsystem=subsystem,
            hdr_offset=0,
        )
        # wipe both header areas and the keyslots area, then the keyslot, then the header
        storage.write(0, bytes(2 * metadata_size))
        for off in range(0, keyslots_size, BULK_CHUNK):
            n = min(BULK_CHUNK, keyslots_size - off)
            storage.write(2 * metadata_size + off, bytes(n))
        storage.write(keyslot.area_offset, ksc.encrypt_keyslot(keyslot, vk, passphrase))
        placeholder = HeaderArea(binary, metadata, b"")
        volume = cls(storage, HeaderChoice(placeholder, None, "new"))
        volume._binary = replace(binary, seqid=0)
        volume._commit(metadata, seqid=1)
        volume._set_key(vk)
        return volume

    # --- state -----------------------------------------------------------------------------

    @property
    def metadata(self) -> Metadata:
        return self._metadata

    @property
    def uuid(self) -> str:
        return self._binary.uuid

    @property
    def label(self) -> str:
        return self._binary.label

    @property
    def subsystem(self) -> str:
        return self._binary.subsystem

    @property
    def seqid(self) -> int:
        return self._binary.seqid

    @property
    def header_size(self) -> int:
        return self._binary.hdr_size

    @property
    def stale_copy(self) -> HeaderCopy | None:
        """The header copy that is damaged or older than the one in use (None if both agree)."""
        return self._choice.stale

    @property
    def header_status(self) -> str:
        """Why the header copy in use was chosen."""
        return self._choice.reason

    def _data_segment(self) -> tuple[int, Segment]:
        """The one crypt segment bastion runs (FormatError naming what it does not run)."""
        segs = self._metadata.segments
        if len(segs) != 1:
            raise FormatError(
                f"LUKS2 volume has {len(segs)} segments (a re-encryption or multi-segment "
                "layout); bastion runs one crypt segment"
            )
        n, seg = next(iter(segs.items()))
        if seg.unsupported:
            raise FormatError(f"LUKS2 segment {n}: {seg.unsupported}")
        if seg.offset == 0:
            raise FormatError("LUKS2 detached header (data segment at offset 0) is not supported")
        if seg.size is not None and seg.offset + seg.size > self._storage.size:
            raise FormatError(
                f"LUKS2 segment {n} ends at {seg.offset + seg.size}, beyond the "
                f"{self._storage.size}-byte device"
            )
        return n, seg

    @property
    def segment(self) -> Segment:
        return self._data_segment()[1]

    def _bound_digest(self) -> tuple[int, Digest]:
        """The digest of the data segment: the keyslots it names open the data."""
        n, _ = self._data_segment()
        for dn, dg in sorted(self._metadata.digests.items()):
            if n in dg.segments:
                return dn, dg
        raise FormatError(f"LUKS2 segment {n} has no digest")

    @property
    def data_size(self) -> int:
        """Plaintext bytes in the data segment."""
        seg = self.segment
        if seg.size is not None:
            return seg.size
        avail = self._storage.size - seg.offset
        return max(0, avail - avail % seg.sector_size)

    @property
    def sector_size(self) -> int:
        return self.segment.sector_size

    @property
    def is_unlocked(self) -> bool:
        return self._volume_key is not None

    @property
    def volume_key(self) -> bytes:
        """The volume key (only for dump --dump-volume-key and re-enrolment)."""
        if self._volume_key is None:
            raise AuthError("the LUKS2 volume is locked")
        return self._volume_key

    @property
    def tokens(self) -> Mapping[int, Token]:
        return self._metadata.tokens

    # --- unlocking -------------------------------------------------------------------------

    def _check_requirements(self) -> None:
        if self._metadata.config.requirements:
            raise FormatError(
                "LUKS2 volume has mandatory requirements bastion does not implement: "
                + ", ".join(self._metadata.config.requirements)
            )

    def _set_key(self, vk: bytes) -> None:
        self._volume_key = vk
        if self._cipher is not None:
            self._cipher.close()
        self._cipher = None

    def _try_keyslot(self, n: int, passphrase: bytes, digest: Digest) -> bytes | None:
        ks = self._metadata.keyslots[n]
        area = self._storage.read(ks.area_offset, ks.area_size)
        candidate = ksc.decrypt_keyslot(ks, area, passphrase)
        try:
            ksc.verify_digest(candidate, digest)
        except AuthError:
            return None
        return candidate

    def unlock_passphrase(self, passphrase: bytes, *, keyslot: int | None = None) -> int:
        """Try the keyslots (high priority first, priority 0 only if named); return the opener."""
        self._check_requirements()
        _, digest = self._bound_digest()
        if keyslot is not None:
            if keyslot not in self._metadata.keyslots:
                raise NotFoundError(f"LUKS2 keyslot {keyslot} does not exist")
            ks = self._metadata.keyslots[keyslot]
            if ks.unusable:
                raise FormatError(f"LUKS2 {ks.unusable}")
            if keyslot not in digest.keyslots:
                raise ConfigError(
                    f"LUKS2 keyslot {keyslot} is unbound (its digest names no data segment): "
                    "it cannot open the volume"
                )
            order = [keyslot]
        else:
            # only usable keyslots bound to the data segment, as cryptsetup open
            prio = {
                n: (ks.priority if ks.priority is not None else 1)
                for n, ks in self._metadata.keyslots.items()
                if n in digest.keyslots and not ks.unusable
            }
            order = sorted((n for n in prio if prio[n] > 0), key=lambda n: (-prio[n], n))
        for n in order:
            vk = self._try_keyslot(n, passphrase, digest)
            if vk is not None:
                self._set_key(vk)
                return n
        raise AuthError("no LUKS2 keyslot accepts this passphrase")

    def unlock_volume_key(self, volume_key: bytes) -> None:
        """Unlock with a known volume key (checked against the segment's digest)."""
        self._check_requirements()
        _, digest = self._bound_digest()
        ksc.verify_digest(volume_key, digest)
        self._set_key(volume_key)

    def lock(self) -> None:
        """Forget the volume key."""
        self._set_key(b"")
        self._volume_key = None

    # --- header commits --------------------------------------------------------------------

    def _commit(self, metadata: Metadata, *, seqid: int | None = None) -> None:
        self._check_requirements()
        new_seqid = self._binary.seqid + 1 if seqid is None else seqid
        for copy in (HeaderCopy.PRIMARY, HeaderCopy.SECONDARY):
            binary = replace(
                self._binary,
                copy=copy,
                seqid=new_seqid,
                salt=self._salts[copy],
                hdr_offset=0 if copy is HeaderCopy.PRIMARY else self._binary.hdr_size,
            )
            first, area, last = build_copy(binary, metadata)
            self._storage.write(binary.hdr_offset, first)
            self._storage.write(binary.hdr_offset + BINARY_HEADER_SIZE, area)
            self._storage.write(binary.hdr_offset, last)
            self._storage.sync()
        self._binary = replace(
            self._binary,
            copy=HeaderCopy.PRIMARY,
            seqid=new_seqid,
            hdr_offset=0,
            salt=self._salts[HeaderCopy.PRIMARY],
        )
        self._metadata = metadata
        self._choice = HeaderChoice(self._choice.winner, None, "both copies agree")

    def repair(self) -> None:
        """Rewrite both copies from the copy in use (fresh salts, seqid+1)."""
        self._salts = {HeaderCopy.PRIMARY: os.urandom(64), HeaderCopy.SECONDARY: os.urandom(64)}
        self._commit(self._metadata)

    def _require_key(self) -> bytes:
        if self._volume_key is None:
            raise AuthError("the LUKS2 volume is locked: unlock it first")
        return self._volume_key

    # --- keyslots --------------------------------------------------------------------------

    def _free_area(self, size: int) -> int:
        hdr = self._binary.hdr_size
        lo, hi = 2 * hdr, 2 * hdr + self._metadata.config.keyslots_size
        used = sorted(
            (k.area_offset, k.area_offset + k.area_size) for k in self._metadata.keyslots.values()
        )
        cursor = lo
        for start, end in used:
            if start - cursor >= size:
                return cursor
            cursor = max(cursor, -(-end // 4096) * 4096)
        if hi - cursor >= size:
            return cursor
        raise ConflictError(f"LUKS2 keyslots area has no free {size}-byte region")

    def _new_keyslot(
        self, passphrase: bytes, kdf: KdfSpec, priority: int | None
    ) -> tuple[Keyslot, bytes]:
        vk = self._require_key()
        size = ksc.area_size_for(len(vk))
        ks = Keyslot(
            key_size=len(vk),
            area_offset=self._free_area(size),
            area_size=size,
            area_encryption=DEFAULT_CIPHER,
            area_key_size=64,
            kdf=kdf.resolve(),
            af_hash="sha256",
            priority=priority,
        )
        return ks, ksc.encrypt_keyslot(ks, vk, passphrase)

    def add_keyslot(
        self,
        passphrase: bytes,
        *,
        kdf: KdfSpec | None = None,
        keyslot: int | None = None,
        priority: int | None = None,
    ) -> int:
        """Add a keyslot for ``passphrase`` (the volume must be unlocked); returns its id."""
        self._require_key()
        m = self._metadata
        n = m.free_keyslot_id() if keyslot is None else keyslot
        if n in m.keyslots:
            raise ConflictError(f"LUKS2 keyslot {n} is already in use")
        if not 0 <= n < limits.LUKS2_MAX_KEYSLOTS:
            raise ConfigError(f"keyslot {n} out of range 0..{limits.LUKS2_MAX_KEYSLOTS - 1}")
        ks, area = self._new_keyslot(passphrase, kdf or KdfSpec(), priority)
        self._storage.write(ks.area_offset, area)
        self._storage.sync()
        dn, dg = self._bound_digest()
        digests = dict(m.digests)
        digests[dn] = replace(dg, keyslots=tuple(sorted((*dg.keyslots, n))))
        keyslots = dict(m.keyslots)
        keyslots[n] = ks
        self._commit(m.with_changes(keyslots=keyslots, digests=digests))
        return n

    def change_keyslot(
        self, keyslot: int, new_passphrase: bytes, *, kdf: KdfSpec | None = None
    ) -> None:
        """Give ``keyslot`` a new passphrase (new area first, old area wiped after the commit)."""
        m = self._metadata
        if keyslot not in m.keyslots:
            raise NotFoundError(f"LUKS2 keyslot {keyslot} does not exist")
        if keyslot not in self._bound_digest()[1].keyslots:
            raise ConfigError(
                f"LUKS2 keyslot {keyslot} is unbound: it does not hold the data key, so "
                "bastion cannot re-key it with the data key"
            )
        old = m.keyslots[keyslot]
        ks, area = self._new_keyslot(new_passphrase, kdf or KdfSpec(), old.priority)
        ks = replace(ks, extra=old.extra)
        self._storage.write(ks.area_offset, area)
        self._storage.sync()
        keyslots = dict(m.keyslots)
        keyslots[keyslot] = ks
        self._commit(m.with_changes(keyslots=keyslots))
        self._wipe(old.area_offset, old.area_size)

    def remove_keyslot(self, keyslot: int, *, allow_last: bool = False) -> None:
        """Remove a keyslot, its digest and token references, then wipe its area."""
        m = self._metadata
        if keyslot not in m.keyslots:
            raise NotFoundError(f"LUKS2 keyslot {keyslot} does not exist")
        if len(m.keyslots) == 1 and not allow_last:
            raise ConflictError(
                f"keyslot {keyslot} is the last one; removing it makes the data unrecoverable"
            )
        old = m.keyslots[keyslot]
        keyslots = {n: k for n, k in m.keyslots.items() if n != keyslot}
        digests = {
            n: replace(d, keyslots=tuple(k for k in d.keyslots if k != keyslot))
            for n, d in m.digests.items()
            # an unbound keyslot's own digest goes with it
            if d.segments or d.keyslots != (keyslot,)
        }
        tokens = {
            n: replace(t, keyslots=tuple(k for k in t.keyslots if k != keyslot))
            for n, t in m.tokens.items()
        }
        self._commit(m.with_changes(keyslots=keyslots, digests=digests, tokens=tokens))
        self._wipe(old.area_offset, old.area_size)

    def _wipe(self, offset: int, size: int) -> None:
        self._storage.write(offset, os.urandom(size))
        self._storage.sync()

    # --- tokens ----------------------------------------------------------------------------

    def add_token(self, token: Token | Mapping[str, Any], *, token_id: int | None = None) -> int:
        """Store a token (any JSON object with ``type`` and ``keyslots``); returns its id."""
        tk = token if isinstance(token, Token) else Token.from_json(dict(token), "new token")
        if tk.type.startswith("luks2-") and tk.type != "luks2-keyring":
            raise ConfigError(f"token type {tk.type!r} is reserved for cryptsetup's built-ins")
        m = self._metadata
        n = m.free_token_id() if token_id is None else token_id
        if n in m.tokens:
            raise ConflictError(f"LUKS2 token {n} is already in use")
        tokens = dict(m.tokens)
        tokens[n] = tk
        self._commit(m.with_changes(tokens=tokens))
        return n

    def remove_token(self, token_id: int) -> None:
        """Delete a token."""
        m = self._metadata
        if token_id not in m.tokens:
            raise NotFoundError(f"LUKS2 token {token_id} does not exist")
        self._commit(m.with_changes(tokens={n: t for n, t in m.tokens.items() if n != token_id}))

    def replace_token(self, token_id: int, token: Token) -> None:
        """Replace a token in one commit."""
        m = self._metadata
        if token_id not in m.tokens:
            raise NotFoundError(f"LUKS2 token {token_id} does not exist")
        tokens = dict(m.tokens)
        tokens[token_id] = token
        self._commit(m.with_changes(tokens=tokens))

    # --- data ------------------------------------------------------------------------------

    def _sector_cipher(self) -> SectorCipher:
        if self._cipher is None:
            self._cipher = SectorCipher(self._require_key(), self.sector_size)
        return self._cipher

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.data_size:
            raise ConfigError(
                f"range [{offset}, +{length}) is outside the {self.data_size}-byte volume"
            )

    def _read_sectors(self, first: int, length: int) -> bytearray:
        buf = bytearray(length)
        self._read_into(first, memoryview(buf))
        return buf

    def _read_into(self, first: int, view: memoryview) -> None:
        """Decrypt the sectors at segment offset ``first`` into ``view`` (whole sectors)."""
        seg = self.segment
        cipher = self._sector_cipher()
        for off in range(0, len(view), BULK_CHUNK):
            part = view[off : off + BULK_CHUNK]
            self._storage_read_into(seg.offset + first + off, part)
            cipher.crypt_inplace(seg.iv_tweak + (first + off) // 512, part, encrypt=False)

    def _storage_read_into(self, offset: int, view: memoryview) -> None:
        if isinstance(self._storage, FileRange):
            self._storage.readinto(offset, view)
        else:
            view[:] = self._storage.read(offset, len(view))

    def _write_sectors(self, first: int, plain: bytes | bytearray | memoryview) -> None:
        seg = self.segment
        cipher = self._sector_cipher()
        view = memoryview(plain)
        scratch = bytearray(min(BULK_CHUNK, len(view)))  # reused: one allocation per call
        for off in range(0, len(view), BULK_CHUNK):
            n = min(BULK_CHUNK, len(view) - off)
            buf = memoryview(scratch)[:n]
            buf[:] = view[off : off + n]
            cipher.crypt_inplace(seg.iv_tweak + (first + off) // 512, buf, encrypt=True)
            self._storage.write(seg.offset + first + off, buf)

    def _workers(self, length: int) -> int:
        """How many processes share a transfer (fork only for big ones on files)."""
        if length < PARALLEL_MIN or not isinstance(self._storage, FileRange):
            return 1
        if not hasattr(os, "fork"):
            return 1
        wanted = os.environ.get("BASTION_LUKS_WORKERS")
        cpus = os.cpu_count() or 1
        n = int(wanted) if wanted and wanted.isdigit() else cpus
        return max(1, min(n, cpus, 8))

    def _split(self, length: int, workers: int) -> list[tuple[int, int]]:
        ss = self.sector_size
        step = -(-(length // ss) // workers) * ss
        return [(o, min(step, length - o)) for o in range(0, length, step)]

    def _in_children(self, parts: list[tuple[int, int]], job: Any) -> None:
        """Run ``job(offset, length)`` for parts[1:] in forked children, parts[0] here."""
        self._sector_cipher()
        pids = []
        for off, n in parts[1:]:
            pid = os.fork()
            if pid == 0:  # child: do one part, never return into the caller
                code = 0
                try:
                    job(off, n)
                except BaseException:
                    code = 1
                os._exit(code)
            pids.append(pid)
        error: BaseException | None = None
        try:
            job(*parts[0])
        except BaseException as exc:
            error = exc
        failed = 0
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                failed += 1
        if error is not None:
            raise error
        if failed:
            raise BackendError(f"{failed} data-path worker process(es) failed")

    def read(self, offset: int, length: int) -> bytes:
        """Plaintext bytes ``[offset, offset+length)`` of the volume."""
        self._check_range(offset, length)
        if length == 0:
            return b""
        ss = self.sector_size
        start = offset - offset % ss
        end = -(-(offset + length) // ss) * ss
        workers = self._workers(end - start)
        if workers == 1:
            buf = self._read_sectors(start, end - start)
            if start == offset and end - start == length:
                return bytes(buf)
            return bytes(memoryview(buf)[offset - start : offset - start + length])
        shared = mmap.mmap(-1, end - start)
        try:
            view = memoryview(shared)
            self._in_children(
                self._split(end - start, workers),
                lambda o, n: self._read_into(start + o, view[o : o + n]),
            )
            out = bytes(view[offset - start : offset - start + length])
            view.release()
        finally:
            shared.close()
        return out

    def readinto(self, offset: int, buffer: bytearray | memoryview) -> None:
        """Fill a caller-owned writable ``buffer`` with plaintext from ``offset``.

        Sector-aligned reads decrypt in place without an intermediate copy (for streaming
        consumers that reuse one buffer); unaligned ones go through :meth:`read`.
        """
        view = memoryview(buffer).cast("B")
        self._check_range(offset, len(view))
        ss = self.sector_size
        if offset % ss or len(view) % ss:
            view[:] = self.read(offset, len(view))
            return
        if len(view):
            self._read_into(offset, view)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write plaintext at ``offset``; partial sectors are read, patched and rewritten."""
        self._check_range(offset, len(data))
        if not data:
            return
        ss = self.sector_size
        view = memoryview(data)
        pos = offset
        done = 0
        head = offset % ss
        if head or len(data) < ss:
            start = offset - head
            sector = self._read_sectors(start, ss)
            n = min(ss - head, len(data))
            sector[head : head + n] = view[:n]
            self._write_sectors(start, sector)
            pos, done = start + ss, n
        whole = (len(data) - done) // ss * ss
        if whole:
            body = view[done : done + whole]
            base = pos
            workers = self._workers(whole)
            if workers == 1:
                self._write_sectors(base, body)
            else:
                self._in_children(
                    self._split(whole, workers),
                    lambda o, n: self._write_sectors(base + o, body[o : o + n]),
                )
            pos += whole
            done += whole
        if done < len(data):
            sector = self._read_sectors(pos, ss)
            rest = len(data) - done
            sector[:rest] = view[done:]
            self._write_sectors(pos, sector)

    def sync(self) -> None:
        """Flush written data to the storage."""
        self._storage.sync()
