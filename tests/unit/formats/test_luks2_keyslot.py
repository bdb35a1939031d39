"""LUKS2 keyslot cryptography: KDF vectors, AF splitter, keyslot areas, digests."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from bastion.errors import AuthError, FormatError
from bastion.formats import luks2_keyslot as ksc
from bastion.formats.luks2 import Argon2Params, KdfType, Keyslot, Pbkdf2Params


def test_pbkdf2_matches_hashlib() -> None:
    salt = os.urandom(32)
    for name in ("sha1", "sha256", "sha512"):
        assert ksc.pbkdf2(b"pw", salt, 1234, name, 40) == hashlib.pbkdf2_hmac(
            name, b"pw", salt, 1234, 40
        )


def test_pbkdf2_known_answer_rfc6070() -> None:
    # RFC 6070 test 2 (PBKDF2-HMAC-SHA1, "password", "salt", 2 iterations)
    assert ksc.pbkdf2(b"password", b"salt", 2, "sha1", 20).hex() == (
        "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"
    )


def test_argon2_known_answer_rfc9106_shape() -> None:
    # argon2-cffi is the reference implementation (phc-winner-argon2); check that
    # bastion passes the LUKS2 parameters through unchanged: raw output, version 0x13.
    from argon2.low_level import Type, hash_secret_raw

    salt = bytes(range(32))
    for kind, t in ((KdfType.ARGON2ID, Type.ID), (KdfType.ARGON2I, Type.I)):
        params = Argon2Params(kind, 3, 64, 2, salt)
        want = hash_secret_raw(b"pw", salt, 3, 64, 2, 32, t, 0x13)
        assert ksc.derive(params, b"pw", 32) == want
    with pytest.raises(FormatError):
        ksc.pbkdf2(b"x", b"y", 1, "md5", 16)


@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("key_size", [32, 64, 17])
def test_af_round_trip(hash_name: str, key_size: int) -> None:
    key = os.urandom(key_size)
    material = ksc.af_split(key, 4000, hash_name)
    assert len(material) == key_size * 4000
    assert ksc.af_merge(material, key_size, 4000, hash_name) == key
    flipped = bytearray(material)
    flipped[5] ^= 1
    assert ksc.af_merge(bytes(flipped), key_size, 4000, hash_name) != key
    with pytest.raises(FormatError):
        ksc.af_merge(material[:-1], key_size, 4000, hash_name)


def test_area_sizes_match_cryptsetup() -> None:
    assert ksc.area_size_for(32) == 131072
    assert ksc.area_size_for(64) == 258048


def _keyslot(kdf: Pbkdf2Params | Argon2Params) -> Keyslot:
    return Keyslot(64, 32768, 258048, "aes-xts-plain64", 64, kdf, "sha256")


def test_keyslot_encrypt_decrypt_and_digest() -> None:
    vk = os.urandom(64)
    ks = _keyslot(ksc.make_kdf(KdfType.PBKDF2, iterations=1000))
    area = ksc.encrypt_keyslot(ks, vk, b"secret")
    assert len(area) == ks.area_size
    assert ksc.decrypt_keyslot(ks, area, b"secret") == vk
    assert ksc.decrypt_keyslot(ks, area, b"wrong") != vk
    dg = ksc.make_digest(vk, keyslots=(0,), segments=(0,), iterations=1000)
    ksc.verify_digest(vk, dg)
    with pytest.raises(AuthError):
        ksc.verify_digest(ksc.decrypt_keyslot(ks, area, b"wrong"), dg)
    with pytest.raises(FormatError):
        ksc.decrypt_keyslot(ks, area[:1000], b"secret")


def test_keyslot_argon2() -> None:
    vk = os.urandom(64)
    ks = _keyslot(ksc.make_kdf(KdfType.ARGON2ID, time=4, memory_kib=64, cpus=2))
    area = ksc.encrypt_keyslot(ks, vk, b"pw")
    assert ksc.decrypt_keyslot(ks, area, b"pw") == vk


def test_digest_known_answer() -> None:
    # the digest is PBKDF2 over the volume key: compare with hashlib
    vk = bytes(range(64))
    dg = ksc.make_digest(vk, keyslots=(0,), segments=(0,), iterations=1000)
    assert dg.digest == hashlib.pbkdf2_hmac("sha256", vk, dg.salt, 1000, 32)
    assert base64.b64encode(dg.digest)


def test_xts_sectors_iv_counts_from_first_iv() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = os.urandom(64)
    data = os.urandom(2048)
    enc = ksc.xts_sectors(key, data, first_iv=7, encrypt=True)
    for n in range(4):
        tweak = (7 + n).to_bytes(16, "little")
        want = (
            Cipher(algorithms.AES(key), modes.XTS(tweak))
            .encryptor()
            .update(data[n * 512 : (n + 1) * 512])
        )
        assert enc[n * 512 : (n + 1) * 512] == want
    assert ksc.xts_sectors(key, enc, first_iv=7, encrypt=False) == data
    with pytest.raises(FormatError):
        ksc.xts_sectors(key, data[:100], first_iv=0, encrypt=True)
    with pytest.raises(FormatError):
        ksc.xts_sectors(key[:20], data, first_iv=0, encrypt=True)
