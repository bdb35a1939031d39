"""The data-path sector cipher: IEEE 1619 vectors, the 512-byte IV rule, both backends."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bastion.errors import FormatError
from bastion.storage.luks2_xts import SectorCipher

VECTORS = json.loads(
    (Path(__file__).parents[2] / "vectors" / "luks2" / "ieee1619_xts.json").read_text()
)
BACKENDS = ["openssl-evp", "cryptography"]
#: vectors whose data unit is a whole 512-byte sector (the others are 32 bytes)
SECTOR_VECTORS = [v for v in VECTORS if len(v["pt"]) % 1024 == 0 or v["equal_key_halves"]]


def reference_xts(key: bytes, tweak: int, data: bytes, *, encrypt: bool = True) -> bytes:
    """IEEE 1619 XTS written from the standard with AES-ECB only (no XTS library)."""
    half = len(key) // 2
    k1, k2 = key[:half], key[half:]
    t = Cipher(algorithms.AES(k2), modes.ECB()).encryptor().update(tweak.to_bytes(16, "little"))
    tv = int.from_bytes(t, "little")
    ecb = Cipher(algorithms.AES(k1), modes.ECB())
    ctx = ecb.encryptor() if encrypt else ecb.decryptor()
    out = bytearray()
    for j in range(0, len(data), 16):
        mask = tv.to_bytes(16, "little")
        block = bytes(a ^ b for a, b in zip(data[j : j + 16], mask, strict=True))
        out += bytes(a ^ b for a, b in zip(ctx.update(block), mask, strict=True))
        tv <<= 1
        if tv >> 128:
            tv = (tv & ((1 << 128) - 1)) ^ 0x87
    return bytes(out)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_ieee1619_reference(vector: dict[str, object]) -> None:
    key = bytes.fromhex(str(vector["key1"]) + str(vector["key2"]))
    pt, ct = bytes.fromhex(str(vector["pt"])), bytes.fromhex(str(vector["ct"]))
    assert reference_xts(key, int(str(vector["data_unit"])), pt) == ct
    assert reference_xts(key, int(str(vector["data_unit"])), ct, encrypt=False) == pt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vector", SECTOR_VECTORS, ids=[v["name"] for v in SECTOR_VECTORS])
def test_ieee1619_vectors(backend: str, vector: dict[str, object]) -> None:
    key = bytes.fromhex(str(vector["key1"]) + str(vector["key2"]))
    pt, ct = bytes.fromhex(str(vector["pt"])), bytes.fromhex(str(vector["ct"]))
    if vector["equal_key_halves"]:
        with pytest.raises((FormatError, ValueError)):
            SectorCipher(key, 512, backend=backend).encrypt(0, bytes(512))
        return
    cipher = SectorCipher(key, 512, backend=backend)
    assert cipher.backend == backend
    assert bytes(cipher.encrypt(int(str(vector["data_unit"])), pt)) == ct
    assert bytes(cipher.decrypt(int(str(vector["data_unit"])), ct)) == pt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sector", [512, 4096])
def test_iv_counts_512_byte_units(backend: str, sector: int) -> None:
    key = os.urandom(64)
    data = os.urandom(sector * 5)
    enc = SectorCipher(key, sector, backend=backend).encrypt(100, data)
    for n in range(5):
        iv = 100 + n * sector // 512
        assert bytes(enc[n * sector : (n + 1) * sector]) == reference_xts(
            key, iv, data[n * sector : (n + 1) * sector]
        )


def test_backends_agree_and_wrap_at_2_64() -> None:
    key = os.urandom(64)
    data = os.urandom(4096 * 4)
    first = (1 << 64) - 16
    a = SectorCipher(key, 4096, backend="openssl-evp").encrypt(first, data)
    b = SectorCipher(key, 4096, backend="cryptography").encrypt(first, data)
    assert a == b
    assert bytes(a[3 * 4096 :]) == reference_xts(key, 8, data[3 * 4096 :])


def test_bad_inputs() -> None:
    with pytest.raises(FormatError):
        SectorCipher(os.urandom(48), 512)
    with pytest.raises(FormatError):
        SectorCipher(os.urandom(64), 300)
    with pytest.raises(FormatError):
        SectorCipher(os.urandom(64), 512).encrypt(0, bytes(100))
    assert SectorCipher(os.urandom(64), 512).encrypt(0, b"") == bytearray()
