"""LUKS2 interop with cryptsetup, both directions.

bastion volumes must pass ``cryptsetup isLuks``/``luksDump``/``open --test-passphrase`` and
``--dump-volume-key`` must print bastion's key; volumes made by ``cryptsetup luksFormat``
(pbkdf2 and argon2id, 512/4096 sectors, several metadata sizes, extra keyslots and tokens)
must unlock in bastion with the same key; after cryptsetup changes a bastion volume's
keyslots bastion must still open it. The data path is checked against an independent
XTS computation (AES-ECB and the IEEE 1619 tweak schedule; no dm-crypt on this host).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from tests.conftest import need_tool

from bastion.formats.luks2 import KdfType
from bastion.storage.luks2_volume import FileRange, KdfSpec, Luks2Volume

pytestmark = pytest.mark.interop
MiB = 1 << 20
CHEAP = KdfSpec(KdfType.PBKDF2, iterations=1000)
TINY_ARGON = KdfSpec(KdfType.ARGON2ID, iterations=4, memory_kib=64, cpus=2)
CS_PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
CS_ARGON = [
    "--pbkdf",
    "argon2id",
    "--pbkdf-force-iterations",
    "4",
    "--pbkdf-memory",
    "64",
    "--pbkdf-parallel",
    "2",
]


def cs(
    *args: str | Path, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    tool = need_tool("cryptsetup")
    proc = subprocess.run(
        [tool, "--batch-mode", *map(str, args)],
        input=None if input is None else input.decode("latin-1"),
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cryptsetup {args} -> {proc.returncode}: {proc.stderr}")
    return proc


def dump_volume_key(img: Path, keyfile: Path) -> bytes:
    out = cs("luksDump", "--dump-volume-key", "--key-file", keyfile, img).stdout
    block = out.split("MK dump:", 1)[1]
    return bytes.fromhex("".join(re.findall(r"\b[0-9a-f]{2}\b", block)))


def image(tmp_path: Path, name: str = "v.img", size: int = 6 * MiB) -> Path:
    img = tmp_path / name
    with open(img, "wb") as f:
        f.truncate(size)
    return img


def keyfile(tmp_path: Path, data: bytes, name: str = "key") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- bastion -> cryptsetup -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sector", "metadata_size", "kdf"),
    [
        (4096, 16384, CHEAP),
        (512, 16384, TINY_ARGON),
        (4096, 65536, TINY_ARGON),
        (512, 1 << 20, CHEAP),
    ],
)
def test_bastion_volume_opens_in_cryptsetup(
    tmp_path: Path, sector: int, metadata_size: int, kdf: KdfSpec
) -> None:
    img = image(tmp_path)
    kf = keyfile(tmp_path, b"bastion pass\n")
    vol = Luks2Volume.format(
        FileRange(img),
        b"bastion pass\n",
        kdf=kdf,
        sector_size=sector,
        metadata_size=metadata_size,
        data_offset=4 * MiB,
        label="bastion-data",
    )
    cs("isLuks", img)
    dump = cs("luksDump", img).stdout
    assert f"sector: {sector} [bytes]" in dump
    assert f"Metadata area: \t{metadata_size} [bytes]" in dump
    assert "bastion-data" in dump
    cs("open", "--test-passphrase", "--key-file", kf, img)
    wrong = cs(
        "open", "--test-passphrase", "--key-file", keyfile(tmp_path, b"nope", "w"), img, check=False
    )
    assert wrong.returncode == 2
    assert dump_volume_key(img, kf) == vol.volume_key
    meta = json.loads(cs("luksDump", "--dump-json-metadata", img).stdout)
    assert meta == vol.metadata.to_json()


def test_cryptsetup_changes_bastion_volume(tmp_path: Path) -> None:
    img = image(tmp_path)
    k0 = keyfile(tmp_path, b"zero", "k0")
    k1 = keyfile(tmp_path, b"one", "k1")
    vol = Luks2Volume.format(FileRange(img), b"zero", kdf=CHEAP, data_offset=4 * MiB)
    vol.add_token({"type": "bastion-note", "keyslots": ["0"], "note": "kept"})
    vol.write(0, b"payload")
    vk = vol.volume_key
    cs("luksAddKey", *CS_PBKDF2, "--key-file", k0, img, k1)
    cs("luksKillSlot", "--key-file", k1, img, "0")
    again = Luks2Volume.open(FileRange(img))
    assert again.unlock_passphrase(b"one") == 1
    assert again.volume_key == vk
    assert again.read(0, 7) == b"payload"
    assert again.tokens[0].fields == {"note": "kept"}
    assert again.tokens[0].keyslots == ()


def test_repaired_bastion_volume_is_clean_for_cryptsetup(tmp_path: Path) -> None:
    img = image(tmp_path)
    kf = keyfile(tmp_path, b"pw")
    Luks2Volume.format(FileRange(img), b"pw", kdf=CHEAP, data_offset=4 * MiB)
    data = bytearray(img.read_bytes())
    data[200] ^= 0xFF  # primary binary header
    img.write_bytes(bytes(data))
    vol = Luks2Volume.open(FileRange(img), repair=True)
    assert vol.stale_copy is None
    cs("isLuks", img)
    cs("open", "--test-passphrase", "--key-file", kf, img)
    assert "Epoch" in cs("luksDump", img).stdout


# --- cryptsetup -> bastion -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pbkdf", "sector", "metadata_size"),
    [
        (CS_PBKDF2, 4096, "16384"),
        (CS_ARGON, 512, "16384"),
        (CS_PBKDF2, 512, "65536"),
        (CS_ARGON, 4096, "1048576"),
        (CS_PBKDF2, 4096, "4194304"),
    ],
)
def test_cryptsetup_volume_unlocks_in_bastion(
    tmp_path: Path, pbkdf: list[str], sector: int, metadata_size: str
) -> None:
    img = image(tmp_path, size=24 * MiB)
    k0 = keyfile(tmp_path, b"format key", "k0")
    k1 = keyfile(tmp_path, b"second key", "k1")
    cs(
        "luksFormat",
        "--type",
        "luks2",
        *pbkdf,
        "--sector-size",
        str(sector),
        "--luks2-metadata-size",
        metadata_size,
        "--key-file",
        k0,
        img,
    )
    cs("luksAddKey", *pbkdf, "--key-file", k0, img, k1)
    token = {"type": "vendor-x", "keyslots": ["1"], "blob": "AAEC", "n": 3}
    cs(
        "token",
        "import",
        "--token-id",
        "3",
        "--json-file",
        keyfile(tmp_path, json.dumps(token).encode(), "t.json"),
        img,
    )
    vk = dump_volume_key(img, k0)
    vol = Luks2Volume.open(FileRange(img))
    assert vol.header_size == int(metadata_size)
    assert vol.sector_size == sector
    assert vol.tokens[3].to_json() == token
    assert vol.unlock_passphrase(b"second key") == 1
    assert vol.volume_key == vk
    assert vol.unlock_passphrase(b"format key") == 0
    # a bastion header rewrite keeps cryptsetup's tokens and keyslots usable
    vol.add_keyslot(b"bastion key", kdf=CHEAP)
    cs("open", "--test-passphrase", "--key-file", keyfile(tmp_path, b"bastion key", "k2"), img)
    cs("open", "--test-passphrase", "--key-file", k1, img)
    exported = json.loads(cs("token", "export", "--token-id", "3", img).stdout)
    assert exported == token


def test_known_volume_key_and_ciphertext(tmp_path: Path) -> None:
    """Format in cryptsetup with a known volume key; bastion's ciphertext matches XTS by hand."""
    img = image(tmp_path, size=20 * MiB)
    vk = bytes(range(1, 65))
    vkf = keyfile(tmp_path, vk, "vk")
    kf = keyfile(tmp_path, b"pw")
    cs(
        "luksFormat",
        "--type",
        "luks2",
        *CS_PBKDF2,
        "--sector-size",
        "4096",
        "--volume-key-file",
        vkf,
        "--key-file",
        kf,
        img,
    )
    vol = Luks2Volume.open(FileRange(img))
    vol.unlock_passphrase(b"pw")
    assert vol.volume_key == vk
    seg = vol.segment
    plain = bytes((i * 7) & 0xFF for i in range(3 * 4096))
    vol.write(8192, plain)
    raw = img.read_bytes()[seg.offset + 8192 : seg.offset + 8192 + len(plain)]
    for n in range(3):
        iv = (8192 + n * 4096) // 512  # IV in 512-byte units: 16, 24, 32
        want = _reference_xts(vk, iv, plain[n * 4096 : (n + 1) * 4096])
        assert raw[n * 4096 : (n + 1) * 4096] == want


def _reference_xts(key: bytes, tweak: int, data: bytes) -> bytes:
    k1, k2 = key[:32], key[32:]
    t = Cipher(algorithms.AES(k2), modes.ECB()).encryptor().update(tweak.to_bytes(16, "little"))
    tv = int.from_bytes(t, "little")
    enc = Cipher(algorithms.AES(k1), modes.ECB()).encryptor()
    out = bytearray()
    for j in range(0, len(data), 16):
        mask = tv.to_bytes(16, "little")
        block = bytes(a ^ b for a, b in zip(data[j : j + 16], mask, strict=True))
        out += bytes(a ^ b for a, b in zip(enc.update(block), mask, strict=True))
        tv <<= 1
        if tv >> 128:
            tv = (tv & ((1 << 128) - 1)) ^ 0x87
    return bytes(out)


def test_damaged_primary_of_cryptsetup_volume(tmp_path: Path) -> None:
    """1 MiB metadata: bastion scans for the secondary, opens, repairs; cryptsetup agrees."""
    img = image(tmp_path, size=24 * MiB)
    kf = keyfile(tmp_path, b"pw")
    cs(
        "luksFormat",
        "--type",
        "luks2",
        *CS_PBKDF2,
        "--luks2-metadata-size",
        "1m",
        "--key-file",
        kf,
        img,
    )
    vk = dump_volume_key(img, kf)
    data = bytearray(img.read_bytes())
    data[0:4096] = bytes(4096)  # primary binary header gone
    img.write_bytes(bytes(data))
    vol = Luks2Volume.open(FileRange(img))
    assert vol.stale_copy is not None and vol.stale_copy.value == "primary"
    assert vol.header_size == 1 << 20
    vol.unlock_passphrase(b"pw")
    assert vol.volume_key == vk
    Luks2Volume.open(FileRange(img), repair=True)
    cs("isLuks", img)
    assert dump_volume_key(img, kf) == vk


@pytest.mark.parametrize("label", ["données-chiffrées", "ラベル"])
def test_utf8_labels_both_ways(tmp_path: Path, label: str) -> None:
    """cryptsetup stores a UTF-8 label byte for byte; bastion reads and writes the same."""
    img, key = image(tmp_path, size=20 * MiB), keyfile(tmp_path, b"pw")
    cs("luksFormat", "--type", "luks2", *CS_PBKDF2, "--label", label, "--key-file", key, img)
    with FileRange(img) as storage:
        vol = Luks2Volume.open(storage)
        assert vol.label == label
        vol.add_token({"type": "x-test", "keyslots": []})  # bastion rewrites the header
    assert f"Label:         \t{label}" in cs("luksDump", img).stdout


def test_utf8_token_text_is_written_as_cryptsetup_writes_it(tmp_path: Path) -> None:
    """json-c writes non-ASCII as raw UTF-8 and '/' unescaped; bastion's rewrite keeps the
    token's bytes identical."""
    img, key = image(tmp_path, size=20 * MiB), keyfile(tmp_path, b"pw")
    cs("luksFormat", "--type", "luks2", *CS_PBKDF2, "--key-file", key, img)
    token = tmp_path / "token.json"
    token.write_text('{"type":"x-utf","keyslots":[],"name":"données/é"}', encoding="utf-8")
    cs("token", "import", "--json-file", token, "--token-id", "0", img)

    def token_bytes() -> bytes:
        area = img.read_bytes()[4096:16384].split(b"\0", 1)[0]
        return area[area.index(b'"tokens":') :].split(b"}", 1)[0]

    before = token_bytes()
    assert "données/é".encode() in before
    with FileRange(img) as storage:
        Luks2Volume.open(storage).add_token({"type": "x-other", "keyslots": []})
    assert token_bytes() == before
    assert json.loads(cs("token", "export", "--token-id", "0", img).stdout)["name"] == "données/é"
