"""The data-path sector cipher of a LUKS2 volume: aes-xts-plain64, fast.

``SectorCipher(key, sector_size)`` encrypts or decrypts whole sectors; the tweak of the
sector at segment byte offset ``o`` is ``iv_tweak + o // 512`` as a 64-bit little-endian
number in 16 bytes (dm-crypt ``plain64``; the IV counts 512-byte units even with
4096-byte sectors because cryptsetup never sets ``iv_large_sectors`` for LUKS2).

Python's ``cryptography`` needs a new cipher object per sector (~4-7 us, most of the
cost at 4 KiB sectors), so the default backend drives OpenSSL's EVP interface through
``ctypes``: the key schedule happens once and only the IV is reset per sector (~2 us).
The library is called through ``PyDLL`` (the GIL stays held): releasing it for each
sub-microsecond call made two threads slower than one. ``BASTION_XTS_BACKEND=
cryptography`` (or a libcrypto that cannot be loaded) selects the portable backend;
both are checked against each other and against the IEEE 1619 vectors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from array import array
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bastion.errors import BackendError, FormatError

IV_UNIT = 512
_MASK64 = (1 << 64) - 1


@functools.cache
def _libcrypto() -> Any:
    """libcrypto 3 through ctypes, or None when it is unavailable (looked up once)."""
    name = ctypes.util.find_library("crypto")
    try:
        if name is None:
            raise OSError("libcrypto not found")
        lib = ctypes.PyDLL(name)
        lib.EVP_CIPHER_fetch.restype = ctypes.c_void_p
        lib.EVP_CIPHER_fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.EVP_CIPHER_free.argtypes = [ctypes.c_void_p]
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
        lib.EVP_CipherInit_ex2.restype = ctypes.c_int
        lib.EVP_CipherInit_ex2.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        lib.EVP_CipherUpdate.restype = ctypes.c_int
        lib.EVP_CipherUpdate.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
    except (OSError, AttributeError):
        return None
    return lib


def _tweak(iv: int) -> bytes:
    return (iv & _MASK64).to_bytes(16, "little")


class _CryptographyXts:
    """Portable backend: one ``cryptography`` cipher object per sector."""

    name = "cryptography"

    def __init__(self, key: bytes) -> None:
        self._alg = algorithms.AES(key)

    def run(self, buf: Any, sector: int, first_iv: int, step: int, encrypt: bool) -> None:
        view = memoryview(buf)
        out = bytearray(sector + 15)
        for n, off in enumerate(range(0, len(buf), sector)):
            cipher = Cipher(self._alg, modes.XTS(_tweak(first_iv + n * step)))
            ctx = cipher.encryptor() if encrypt else cipher.decryptor()
            ctx.update_into(view[off : off + sector], out)
            view[off : off + sector] = out[:sector]

    def close(self) -> None:
        pass


class _EvpXts:
    """OpenSSL EVP backend: key schedule once per direction, IV reset per sector."""

    name = "openssl-evp"

    def __init__(self, lib: Any, key: bytes) -> None:
        self._lib = lib
        name = b"AES-256-XTS" if len(key) == 64 else b"AES-128-XTS"
        self._cipher = lib.EVP_CIPHER_fetch(None, name, None)
        if not self._cipher:
            raise BackendError(f"libcrypto has no {name.decode()}")
        self._ctx: dict[bool, int] = {}
        self._lock = threading.Lock()
        for enc in (True, False):
            ctx = lib.EVP_CIPHER_CTX_new()
            if not ctx:
                self.close()
                raise BackendError("EVP_CIPHER_CTX_new failed")
            self._ctx[enc] = ctx
            if lib.EVP_CipherInit_ex2(ctx, self._cipher, key, None, int(enc), None) != 1:
                self.close()
                raise FormatError("OpenSSL refused the XTS key (are both halves equal?)")

    def run(self, buf: Any, sector: int, first_iv: int, step: int, encrypt: bool) -> None:
        count = len(buf) // sector
        ivs = array("Q", bytes(16 * count))
        if first_iv + (count - 1) * step <= _MASK64:
            ivs[0::2] = array("Q", range(first_iv, first_iv + count * step, step))
        else:
            ivs[0::2] = array("Q", [(first_iv + n * step) & _MASK64 for n in range(count)])
        iv_base = ivs.buffer_info()[0]
        data = (ctypes.c_char * len(buf)).from_buffer(buf)
        base = ctypes.addressof(data)
        outl = ctypes.c_int()
        outp = ctypes.addressof(outl)
        init = self._lib.EVP_CipherInit_ex2
        update = self._lib.EVP_CipherUpdate
        with self._lock:
            ctx = self._ctx[encrypt]
            for n in range(count):
                if init(ctx, None, None, iv_base + 16 * n, -1, None) != 1:
                    raise BackendError("EVP_CipherInit_ex2 failed for an XTS sector")
                off = base + n * sector
                if update(ctx, off, outp, off, sector) != 1:
                    raise BackendError("EVP_CipherUpdate failed for an XTS sector")
        del data

    def close(self) -> None:
        for ctx in self._ctx.values():
            self._lib.EVP_CIPHER_CTX_free(ctx)
        self._ctx = {}
        if self._cipher:
            self._lib.EVP_CIPHER_free(self._cipher)
            self._cipher = None

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            self.close()


class SectorCipher:
    """aes-xts-plain64 over whole sectors of ``sector_size`` bytes (IV in 512-byte units)."""

    def __init__(self, key: bytes, sector_size: int, *, backend: str | None = None) -> None:
        if len(key) not in (32, 64):
            raise FormatError(f"aes-xts-plain64 key must be 32 or 64 bytes, got {len(key)}")
        if sector_size not in (512, 1024, 2048, 4096):
            raise FormatError(f"sector size must be 512..4096, got {sector_size}")
        self.sector_size = sector_size
        self.step = sector_size // IV_UNIT
        choice = backend or os.environ.get("BASTION_XTS_BACKEND", "auto")
        impl: _EvpXts | _CryptographyXts
        lib = _libcrypto() if choice in ("auto", "openssl-evp") else None
        if lib is not None:
            impl = _EvpXts(lib, key)
        elif choice == "openssl-evp":
            raise BackendError("BASTION_XTS_BACKEND=openssl-evp but libcrypto cannot be loaded")
        else:
            impl = _CryptographyXts(key)
        self._impl = impl

    @property
    def backend(self) -> str:
        """Which implementation runs: ``openssl-evp`` or ``cryptography``."""
        return self._impl.name

    def _run(self, data: bytes | bytearray | memoryview, first_iv: int, enc: bool) -> bytearray:
        if len(data) % self.sector_size:
            raise FormatError(f"{len(data)} bytes are not whole {self.sector_size}-byte sectors")
        buf = bytearray(data)
        if buf:
            self._impl.run(buf, self.sector_size, first_iv, self.step, enc)
        return buf

    def crypt_inplace(self, first_iv: int, buf: Any, *, encrypt: bool) -> None:
        """Encrypt or decrypt whole sectors in place in a writable buffer."""
        if len(buf) % self.sector_size:
            raise FormatError(f"{len(buf)} bytes are not whole {self.sector_size}-byte sectors")
        if len(buf):
            self._impl.run(buf, self.sector_size, first_iv, self.step, encrypt)

    def encrypt(self, first_iv: int, data: bytes | bytearray | memoryview) -> bytearray:
        """Encrypt sectors; the first uses IV ``first_iv``, the next ``first_iv + step``..."""
        return self._run(data, first_iv, True)

    def decrypt(self, first_iv: int, data: bytes | bytearray | memoryview) -> bytearray:
        """Decrypt sectors (same IV rule as :meth:`encrypt`)."""
        return self._run(data, first_iv, False)

    def close(self) -> None:
        """Free the OpenSSL contexts (also done on garbage collection)."""
        self._impl.close()
