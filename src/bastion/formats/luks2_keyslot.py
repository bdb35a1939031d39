"""LUKS2 keyslot cryptography: KDFs, the anti-forensic splitter, keyslot areas, digests.

Pure computation, byte-compatible with cryptsetup (lib/luks2/luks2_keyslot_luks2.c,
lib/luks1/af.c, lib/luks2/luks2_digest_pbkdf2.c):

* the KDF turns a passphrase into the area key: PBKDF2-HMAC-``hash`` (``cryptography``)
  or raw Argon2i/Argon2id version 0x13 with lanes = ``cpus`` (argon2-cffi);
* the volume key is AF-split into 4000 stripes (H1 diffusion with the AF hash), padded
  to 512 bytes, and encrypted with aes-xts-plain64 in 512-byte sectors whose IV counts
  from 0 at the area start;
* the volume key is checked by PBKDF2 over it, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from argon2.exceptions import HashingError
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from bastion.errors import AuthError, FormatError
from bastion.formats.luks2 import (
    DIGEST_SIZES,
    AnyKdf,
    Argon2Params,
    Digest,
    KdfParams,
    KdfType,
    Keyslot,
    Pbkdf2Params,
)

AREA_SECTOR = 512
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def pbkdf2(password: bytes, salt: bytes, iterations: int, hash_name: str, length: int) -> bytes:
    """PBKDF2-HMAC-``hash_name``."""
    if hash_name not in _HASHES:
        raise FormatError(f"unsupported PBKDF2 hash {hash_name!r}")
    kdf = PBKDF2HMAC(_HASHES[hash_name](), length=length, salt=salt, iterations=iterations)
    return kdf.derive(password)


def derive(kdf: AnyKdf, passphrase: bytes, length: int) -> bytes:
    """The keyslot area key from a passphrase (FormatError for a KDF bastion cannot run)."""
    if isinstance(kdf, Pbkdf2Params):
        return pbkdf2(passphrase, kdf.salt, kdf.iterations, kdf.hash, length)
    if not isinstance(kdf, Argon2Params):
        raise FormatError(f"LUKS2 KDF {kdf.type!r} is not supported")
    kind = Type.ID if kdf.type is KdfType.ARGON2ID else Type.I
    try:
        return bytes(
            hash_secret_raw(
                secret=passphrase,
                salt=kdf.salt,
                time_cost=kdf.time,
                memory_cost=kdf.memory,
                parallelism=kdf.cpus,
                hash_len=length,
                type=kind,
                version=0x13,
            )
        )
    except (HashingError, ValueError, OverflowError) as exc:
        raise FormatError(
            f"{kdf.type} parameters time={kdf.time} memory={kdf.memory} KiB cpus={kdf.cpus} "
            f"rejected by Argon2: {exc}"
        ) from exc


# --- anti-forensic splitter (LUKS1 spec section 2.4) ---------------------------------------


def _diffuse(block: bytes, hash_name: str) -> bytes:
    size = DIGEST_SIZES[hash_name]
    out = bytearray()
    for i in range(0, len(block), size):
        chunk = block[i : i + size]
        h = hashlib.new(hash_name)
        h.update((i // size).to_bytes(4, "big"))
        h.update(chunk)
        out += h.digest()[: len(chunk)]
    return bytes(out)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def af_split(key: bytes, stripes: int, hash_name: str) -> bytes:
    """Split ``key`` into ``stripes`` stripes (random, except the last)."""
    n = len(key)
    material = bytearray(os.urandom(n * (stripes - 1)))
    d = bytes(n)
    for i in range(stripes - 1):
        d = _diffuse(_xor(d, bytes(material[i * n : (i + 1) * n])), hash_name)
    material += _xor(d, key)
    return bytes(material)


def af_merge(material: bytes, key_size: int, stripes: int, hash_name: str) -> bytes:
    """Recover the key from AF-split ``material``."""
    if len(material) < key_size * stripes:
        raise FormatError(f"AF material is {len(material)} bytes, needs {key_size * stripes}")
    d = bytes(key_size)
    for i in range(stripes - 1):
        d = _diffuse(_xor(d, material[i * key_size : (i + 1) * key_size]), hash_name)
    last = material[(stripes - 1) * key_size : stripes * key_size]
    return _xor(d, last)


def split_size(key_size: int, stripes: int) -> int:
    """Bytes of AF material rounded up to whole 512-byte sectors."""
    return -(-key_size * stripes // AREA_SECTOR) * AREA_SECTOR


def area_size_for(key_size: int, stripes: int = 4000) -> int:
    """cryptsetup's keyslot area size: AF material rounded up to 4 KiB."""
    return -(-split_size(key_size, stripes) // 4096) * 4096


# --- XTS over 512-byte sectors (keyslot areas) ---------------------------------------------


def xts_sectors(
    key: bytes, data: bytes, *, first_iv: int, encrypt: bool, sector: int = AREA_SECTOR
) -> bytes:
    """aes-xts-plain64 over whole ``sector``-byte units with IVs first_iv, first_iv+1, ..."""
    if len(data) % sector:
        raise FormatError(f"XTS input of {len(data)} bytes is not whole {sector}-byte sectors")
    if len(key) not in (32, 64):
        raise FormatError(f"XTS key must be 32 or 64 bytes, got {len(key)}")
    alg = algorithms.AES(key)
    out = bytearray(len(data) + 15)
    src = memoryview(data)
    dst = memoryview(out)
    for n, off in enumerate(range(0, len(data), sector)):
        tweak = ((first_iv + n) & ((1 << 64) - 1)).to_bytes(16, "little")
        cipher = Cipher(alg, modes.XTS(tweak))
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        ctx.update_into(src[off : off + sector], dst[off:])
    return bytes(out[: len(data)])


# --- keyslot open / create -----------------------------------------------------------------


def decrypt_keyslot(keyslot: Keyslot, area: bytes, passphrase: bytes) -> bytes:
    """The candidate volume key from a keyslot's area bytes (check it with verify_digest)."""
    if keyslot.unusable:
        raise FormatError(f"LUKS2 {keyslot.unusable}")
    size = split_size(keyslot.key_size, keyslot.af_stripes)
    if len(area) < size:
        raise FormatError(f"keyslot area truncated: {len(area)} of {size} bytes")
    area_key = derive(keyslot.kdf, passphrase, keyslot.area_key_size)
    material = xts_sectors(area_key, area[:size], first_iv=0, encrypt=False)
    return af_merge(material, keyslot.key_size, keyslot.af_stripes, keyslot.af_hash)


def encrypt_keyslot(keyslot: Keyslot, volume_key: bytes, passphrase: bytes) -> bytes:
    """The full area bytes (AF-split, encrypted, random tail) for a new keyslot."""
    if len(volume_key) != keyslot.key_size:
        raise FormatError(
            f"volume key is {len(volume_key)} bytes, keyslot wants {keyslot.key_size}"
        )
    material = af_split(volume_key, keyslot.af_stripes, keyslot.af_hash)
    size = split_size(keyslot.key_size, keyslot.af_stripes)
    material += os.urandom(size - len(material))
    area_key = derive(keyslot.kdf, passphrase, keyslot.area_key_size)
    enc = xts_sectors(area_key, material, first_iv=0, encrypt=True)
    return enc + os.urandom(keyslot.area_size - len(enc))


def digest_of(volume_key: bytes, digest: Digest) -> bytes:
    """PBKDF2 over the volume key with the digest's parameters."""
    return pbkdf2(volume_key, digest.salt, digest.iterations, digest.hash, len(digest.digest))


def verify_digest(volume_key: bytes, digest: Digest) -> None:
    """Raise AuthError unless ``volume_key`` matches ``digest``."""
    if not hmac.compare_digest(digest_of(volume_key, digest), digest.digest):
        raise AuthError("volume key does not match the LUKS2 digest")


def make_digest(
    volume_key: bytes,
    *,
    keyslots: tuple[int, ...],
    segments: tuple[int, ...],
    iterations: int,
    hash_name: str = "sha256",
) -> Digest:
    """A new pbkdf2 digest over ``volume_key``."""
    salt = os.urandom(32)
    dg = Digest(keyslots, segments, hash_name, iterations, salt, b"\0" * DIGEST_SIZES[hash_name])
    return Digest(keyslots, segments, hash_name, iterations, salt, digest_of(volume_key, dg))


def make_kdf(
    kind: KdfType,
    *,
    iterations: int = 1000,
    time: int = 4,
    memory_kib: int = 32,
    cpus: int = 1,
    hash_name: str = "sha256",
) -> KdfParams:
    """KDF parameters with a fresh 32-byte salt."""
    salt = os.urandom(32)
    if kind is KdfType.PBKDF2:
        return Pbkdf2Params(hash_name, iterations, salt)
    return Argon2Params(kind, time, memory_kib, cpus, salt)
