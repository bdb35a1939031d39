"""Fuse banks: a write-once key-hash slot and 64 blow-only bits, in a file or in TPM NV.

Secure boot needs two one-time-programmable things a device cannot take back: the
SHA-256 of the platform root public key (burned once, at provisioning) and a
security-version counter for anti-rollback, kept as blow-only bits (the counter is the
number of blown bits). Two backends share one interface (``FuseBank``):

* ``FileFuseBank(path)``: the simulated platform's fuse file. A 48-byte file, replaced
  atomically under an exclusive lock: ``BFUSES01`` (8-byte magic), the key hash (32
  bytes; all zero = not burned), the bits (u64 big-endian). Every write re-reads the
  file and only ORs into it, so no code path clears a bit or changes a burned hash. A
  missing file is a blank bank; a file of any other shape is a ``FormatError``.
* ``TpmFuseBank(tpm, base_index)``: five TPM_NT_BITS NV indexes, ``base_index`` for the
  counter bits and ``base_index + 1 .. + 4`` for the key hash as four big-endian 64-bit
  words. Bits indexes can only be ORed, so a burned word can only gain bits, which makes
  it differ from every key's hash. Each word is written by one NV_SetBits, so a crash
  leaves each word zero or complete: burning the same hash again completes it, and
  reading a partly burned slot fails closed (``ConflictError``). The indexes are
  owner-authorised: the bank is as strong as the TPM owner authorisation (and a real
  TPM resets a bits index that is undefined and defined again; see docs/tpm.md).

Semantics (both backends): ``burn_key_hash(h)`` is a no-op if ``h`` is already burned
and a ``ConflictError`` if another hash is; ``blow_to(n)`` blows bits until ``n`` are
blown, is a no-op when ``n`` equals the counter and raises ``RollbackError`` when ``n``
is lower (a fuse cannot be un-blown; the caller asked for a rollback).
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bastion import limits
from bastion.errors import ConfigError, ConflictError, FormatError, NotFoundError, RollbackError
from bastion.io.files import atomic_write, read_bounded
from bastion.tpm.base import Tpm

FUSE_BITS = 64
KEY_HASH_SIZE = 32
FILE_MAGIC = b"BFUSES01"
#: default first NV index of a TpmFuseBank (owner range; five indexes from here)
DEFAULT_BASE_INDEX = 0x013BA500
_WORDS = KEY_HASH_SIZE // 8
_BLANK_HASH = bytes(KEY_HASH_SIZE)


def counter_of(bits: int) -> int:
    """The security-version counter a bit field encodes: the number of blown bits."""
    return bin(bits).count("1")


def bits_for(current: int, n: int) -> int:
    """``current`` with its lowest clear bits blown until ``n`` bits are blown.

    ``ConfigError`` when ``n`` is not 0..64; ``RollbackError`` when ``n`` is lower than
    the number already blown.
    """
    if not 0 <= n <= FUSE_BITS:
        raise ConfigError(f"security version {n} out of range 0..{FUSE_BITS}")
    have = counter_of(current)
    if n < have:
        raise RollbackError(
            f"fuse counter is {have}; blowing to {n} would lower it and fuses cannot be un-blown"
        )
    bits = current
    bit = 0
    while counter_of(bits) < n:
        bits |= 1 << bit
        bit += 1
    return bits


def _check_hash(key_hash: bytes) -> None:
    if len(key_hash) != KEY_HASH_SIZE:
        raise ConfigError(f"key hash is {len(key_hash)} bytes, expected {KEY_HASH_SIZE} (SHA-256)")
    if key_hash == _BLANK_HASH:
        raise ConfigError("an all-zero key hash cannot be burned (it means 'not burned')")


class FuseBank(Protocol):
    """What secure boot needs from one-time-programmable fuses."""

    def key_hash(self) -> bytes | None:
        """The burned SHA-256 of the platform root public key, or None if blank."""
        ...

    def burn_key_hash(self, key_hash: bytes) -> None:
        """Burn ``key_hash`` once (no-op if equal; ConflictError if another is burned)."""
        ...

    def counter(self) -> int:
        """The security-version counter (number of blown bits, 0..64)."""
        ...

    def blow_to(self, n: int) -> None:
        """Blow bits until the counter is ``n`` (RollbackError if ``n`` is lower)."""
        ...

    def show(self) -> dict[str, Any]:
        """The bank as a JSON-able dict."""
        ...


# --- the fuse file ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FuseFile:
    """The 48-byte fuse file: magic, key hash (zeros = blank), bits (u64 big-endian)."""

    key_hash: bytes = _BLANK_HASH
    bits: int = 0

    @classmethod
    def parse(cls, data: bytes) -> FuseFile:
        """Parse the file; FormatError on any other size or magic."""
        if len(data) != limits.FUSE_FILE_SIZE:
            raise FormatError(f"fuse file is {len(data)} bytes, expected {limits.FUSE_FILE_SIZE}")
        if data[:8] != FILE_MAGIC:
            raise FormatError(f"fuse file magic is {data[:8]!r}, expected {FILE_MAGIC!r}")
        (bits,) = struct.unpack(">Q", data[40:48])
        return cls(data[8:40], bits)

    def to_bytes(self) -> bytes:
        """The 48 bytes."""
        return FILE_MAGIC + self.key_hash + struct.pack(">Q", self.bits)

    @property
    def burned(self) -> bool:
        """True once a key hash is burned."""
        return self.key_hash != _BLANK_HASH


class FileFuseBank:
    """Fuses kept in a file (the simulated platform); see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileFuseBank({str(self.path)!r})"

    def _read(self) -> FuseFile:
        try:
            data = read_bounded(self.path, limits.FUSE_FILE_SIZE, "fuse file")
        except NotFoundError:
            return FuseFile()
        return FuseFile.parse(data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, old: FuseFile, new: FuseFile) -> None:
        # the invariants, checked on the exact bytes about to be written
        if old.bits & ~new.bits or (old.burned and old.key_hash != new.key_hash):
            raise ConflictError(f"refusing to clear fuses in {self.path}")
        if new != old:
            atomic_write(self.path, new.to_bytes(), mode=0o600)

    def key_hash(self) -> bytes | None:
        state = self._read()
        return state.key_hash if state.burned else None

    def burn_key_hash(self, key_hash: bytes) -> None:
        _check_hash(key_hash)
        with self._locked():
            state = self._read()
            if state.burned:
                if hmac.compare_digest(state.key_hash, key_hash):
                    return
                raise ConflictError(
                    f"fuse key hash in {self.path} is already burned to "
                    f"{state.key_hash.hex()}, refusing {key_hash.hex()}"
                )
            self._write(state, FuseFile(key_hash, state.bits))

    def counter(self) -> int:
        return counter_of(self._read().bits)

    def blow_to(self, n: int) -> None:
        with self._locked():
            state = self._read()
            self._write(state, FuseFile(state.key_hash, bits_for(state.bits, n)))

    def show(self) -> dict[str, Any]:
        state = self._read()
        return {
            "backend": "file",
            "path": str(self.path),
            "key_hash": state.key_hash.hex() if state.burned else None,
            "counter": counter_of(state.bits),
            "bits": f"{state.bits:016x}",
        }


# --- TPM NV bits -----------------------------------------------------------------------------


class TpmFuseBank:
    """Fuses kept in five TPM NV bits indexes from ``base_index``; see the module docstring."""

    def __init__(self, tpm: Tpm, base_index: int = DEFAULT_BASE_INDEX) -> None:
        self.tpm = tpm
        self.base_index = base_index

    def __repr__(self) -> str:
        return f"TpmFuseBank({self.tpm!r}, 0x{self.base_index:08x})"

    def _read(self, index: int) -> int:
        try:
            return self.tpm.nv_read_bits(index)
        except NotFoundError:
            return 0

    def _ensure(self, index: int) -> None:
        try:
            self.tpm.nv_read_bits(index)
        except NotFoundError:
            self.tpm.nv_define_bits(index)

    def _words(self) -> list[int]:
        return [self._read(self.base_index + 1 + i) for i in range(_WORDS)]

    def key_hash(self) -> bytes | None:
        words = self._words()
        if not any(words):
            return None
        if not all(words):
            raise ConflictError(
                f"fuse key hash at NV 0x{self.base_index + 1:08x} is only partly burned; "
                "burn the same hash again to complete it"
            )
        return b"".join(struct.pack(">Q", w) for w in words)

    def burn_key_hash(self, key_hash: bytes) -> None:
        _check_hash(key_hash)
        target = struct.unpack(">4Q", key_hash)
        current = self._words()
        for have, want in zip(current, target, strict=True):
            if have and have != want:
                burned = b"".join(struct.pack(">Q", w) for w in current).hex()
                raise ConflictError(
                    f"fuse key hash at NV 0x{self.base_index + 1:08x} is already burned "
                    f"({burned}), refusing {key_hash.hex()}"
                )
        for i, (have, want) in enumerate(zip(current, target, strict=True)):
            if not have:
                index = self.base_index + 1 + i
                self._ensure(index)
                self.tpm.nv_set_bits(index, want)

    def counter(self) -> int:
        return counter_of(self._read(self.base_index))

    def blow_to(self, n: int) -> None:
        current = self._read(self.base_index)
        bits = bits_for(current, n)
        if bits != current:
            self._ensure(self.base_index)
            self.tpm.nv_set_bits(self.base_index, bits)

    def show(self) -> dict[str, Any]:
        bits = self._read(self.base_index)
        digest = self.key_hash()
        return {
            "backend": "tpm",
            "base_index": f"0x{self.base_index:08x}",
            "key_hash": digest.hex() if digest else None,
            "counter": counter_of(bits),
            "bits": f"{bits:016x}",
        }
