"""storage/verity_reader.py: format, full verification and the lazy verifying reader."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    NotFoundError,
    VerificationError,
)
from bastion.formats.verity import HashAlgorithm, VerityParams, VeritySuperblock
from bastion.storage.verity_reader import (
    VerityReader,
    compute_tree,
    format_region,
    read_superblock,
    verify_region,
)

UUID = uuid.UUID("11111111-2222-4333-8444-555555555555")
# 512-byte blocks, sha256: 16 digests per hash block. 4200 blocks -> levels of 263, 17, 2, 1
PARAMS = VerityParams(data_blocks=4200, data_block_size=512, hash_block_size=512, salt=b"pepper")
LEVEL_BLOCKS = (263, 17, 2, 1)


def _payload(n: int = PARAMS.data_size) -> bytes:
    return hashlib.shake_256(b"verity-reader").digest(n)


@pytest.fixture
def volume(tmp_path: Path) -> tuple[Path, Path, bytes, bytes]:
    data, hash_file = tmp_path / "data.img", tmp_path / "hash.img"
    payload = _payload()
    data.write_bytes(payload)
    root = format_region(data, hash_file, PARAMS, uuid=UUID).root_hash
    return data, hash_file, root, payload


def _flip(path: Path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def test_geometry_of_the_fixture() -> None:
    assert PARAMS.geometry().level_blocks == LEVEL_BLOCKS


def test_format_writes_superblock_and_verify_accepts(
    volume: tuple[Path, Path, bytes, bytes],
) -> None:
    data, hash_file, root, _ = volume
    sb = read_superblock(hash_file)
    assert sb == VeritySuperblock(PARAMS, UUID)
    assert hash_file.stat().st_size == (1 + sum(LEVEL_BLOCKS)) * 512
    assert verify_region(data, hash_file, root) == PARAMS


def test_parallel_and_serial_hashing_agree(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.write_bytes(_payload())
    serial = compute_tree(data, PARAMS, workers=1)
    parallel = compute_tree(data, PARAMS, workers=2, parallel_min_bytes=0)
    assert serial == parallel


def test_parallel_verify_names_the_data_block(volume: tuple[Path, Path, bytes, bytes]) -> None:
    data, hash_file, root, _ = volume
    verify_region(data, hash_file, root, workers=2, parallel_min_bytes=0)
    _flip(data, 3001 * 512 + 9)
    with pytest.raises(DigestMismatchError) as info:
        verify_region(data, hash_file, root, workers=2, parallel_min_bytes=0)
    assert (info.value.area, info.value.block) == ("data", 3001)


def _hash_block_offset(level: int, index: int = 0) -> int:
    # superblock block, then top level first
    offsets = {3: 1, 2: 2, 1: 4, 0: 21}
    return (offsets[level] + index) * 512


# (name, corrupt(data, hash, root) -> root to use, expected error, area, block, level)
Corrupt = Callable[[Path, Path, bytes], bytes]
NEGATIVE: list[tuple[str, Corrupt, type[Exception], str | None, int | None, int | None]] = [
    ("data block 0", lambda d, h, r: (_flip(d, 5), r)[1], DigestMismatchError, "data", 0, None),
    (
        "data block 4199",
        lambda d, h, r: (_flip(d, 4199 * 512 + 511, 0x80), r)[1],
        DigestMismatchError,
        "data",
        4199,
        None,
    ),
    (
        "hash level 0",
        lambda d, h, r: (_flip(h, _hash_block_offset(0, 100) + 3), r)[1],
        DigestMismatchError,
        "hash",
        121,
        0,
    ),
    (
        "hash level 1",
        lambda d, h, r: (_flip(h, _hash_block_offset(1, 16) + 40), r)[1],
        DigestMismatchError,
        "hash",
        20,
        1,
    ),
    (
        "hash level 2",
        lambda d, h, r: (_flip(h, _hash_block_offset(2, 1)), r)[1],
        DigestMismatchError,
        "hash",
        3,
        2,
    ),
    (
        "hash level 3 (top)",
        lambda d, h, r: (_flip(h, _hash_block_offset(3) + 511), r)[1],
        DigestMismatchError,
        "hash",
        1,
        3,
    ),
    (
        "wrong root hash",
        lambda d, h, r: bytes([r[0] ^ 1]) + r[1:],
        DigestMismatchError,
        "hash",
        1,
        3,
    ),
    (
        "superblock salt bit",
        lambda d, h, r: (_flip(h, 88), r)[1],
        DigestMismatchError,
        "hash",
        1,
        3,
    ),
    (
        "superblock signature bit",
        lambda d, h, r: (_flip(h, 0), r)[1],
        FormatError,
        None,
        None,
        None,
    ),
    (
        "superblock block size bit",
        lambda d, h, r: (_flip(h, 65), r)[1],
        FormatError,
        None,
        None,
        None,
    ),
    (
        "superblock data blocks bit",
        lambda d, h, r: (_flip(h, 73, 0x40), r)[1],
        FormatError,
        None,
        None,
        None,
    ),
    (
        "truncated hash file",
        lambda d, h, r: (os.truncate(h, h.stat().st_size - 1), r)[1],
        FormatError,
        None,
        None,
        None,
    ),
    (
        "truncated superblock",
        lambda d, h, r: (os.truncate(h, 300), r)[1],
        FormatError,
        None,
        None,
        None,
    ),
    (
        "truncated data file",
        lambda d, h, r: (os.truncate(d, PARAMS.data_size - 512), r)[1],
        FormatError,
        None,
        None,
        None,
    ),
    ("short root hash", lambda d, h, r: r[:31], FormatError, None, None, None),
]


@pytest.mark.parametrize(
    ("name", "corrupt", "error", "area", "block", "level"), NEGATIVE, ids=[n[0] for n in NEGATIVE]
)
def test_full_verification_negative_table(
    volume: tuple[Path, Path, bytes, bytes],
    name: str,
    corrupt: Corrupt,
    error: type[Exception],
    area: str | None,
    block: int | None,
    level: int | None,
) -> None:
    data, hash_file, root, _ = volume
    root = corrupt(data, hash_file, root)
    with pytest.raises(error) as info:
        verify_region(data, hash_file, root)
    if isinstance(info.value, DigestMismatchError):
        assert (info.value.area, info.value.block, info.value.level) == (area, block, level)
        assert str(block) in str(info.value)


@pytest.mark.parametrize(
    ("name", "corrupt", "error", "area", "block", "level"), NEGATIVE, ids=[n[0] for n in NEGATIVE]
)
def test_reader_negative_table(
    volume: tuple[Path, Path, bytes, bytes],
    name: str,
    corrupt: Corrupt,
    error: type[Exception],
    area: str | None,
    block: int | None,
    level: int | None,
) -> None:
    data, hash_file, root, _ = volume
    root = corrupt(data, hash_file, root)
    with pytest.raises(error) as info, VerityReader(data, hash_file, root) as reader:
        reader.read()
    if isinstance(info.value, DigestMismatchError):
        assert (info.value.area, info.value.block, info.value.level) == (area, block, level)


def test_reader_is_lazy_only_touched_blocks_fail(volume: tuple[Path, Path, bytes, bytes]) -> None:
    data, hash_file, root, payload = volume
    _flip(data, 700 * 512 + 1)
    with VerityReader(data, hash_file, root) as reader:
        assert reader.pread(1024, 100 * 512) == payload[100 * 512 : 102 * 512]
        reader.seek(700 * 512 - 10)
        with pytest.raises(DigestMismatchError) as info:
            reader.read(20)
        assert info.value.block == 700
        reader.seek(701 * 512)
        assert reader.read(512) == payload[701 * 512 : 702 * 512]


def test_reader_file_protocol(volume: tuple[Path, Path, bytes, bytes]) -> None:
    data, hash_file, root, payload = volume
    with VerityReader(data, hash_file, root) as reader:
        assert reader.readable() and reader.seekable() and not reader.writable()
        assert reader.size == len(payload)
        assert reader.read(10) == payload[:10]
        assert reader.tell() == 10
        buf = bytearray(1000)
        assert reader.readinto(buf) == 1000 and bytes(buf) == payload[10:1010]
        assert reader.seek(-5, io.SEEK_END) == len(payload) - 5
        assert reader.read() == payload[-5:]
        assert reader.read(10) == b""
        reader.seek(len(payload) + 100)
        assert reader.read(1) == b""
        reader.seek(12345)
        assert reader.seek(100, io.SEEK_CUR) == 12445
        with pytest.raises(ValueError):
            reader.seek(-1)
    assert reader.closed
    with pytest.raises(ValueError):
        reader.read(1)
    with pytest.raises(ValueError):
        reader.read()
    buffered = io.BufferedReader(VerityReader(data, hash_file, root), buffer_size=8192)
    assert buffered.read() == payload
    buffered.close()


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 1), (511, 2), (513, 5000), (100_000, 300_000), (0, 10**9)]
)
def test_reader_reads_arbitrary_ranges(
    volume: tuple[Path, Path, bytes, bytes], offset: int, length: int
) -> None:
    data, hash_file, root, payload = volume
    with VerityReader(data, hash_file, root) as reader:
        assert reader.pread(length, offset) == payload[offset : offset + length]


def test_reader_caches_verified_hash_blocks(volume: tuple[Path, Path, bytes, bytes]) -> None:
    data, hash_file, root, payload = volume
    with VerityReader(data, hash_file, root) as reader:
        assert reader.pread(512, 0) == payload[:512]
        # the level-0 block covering data block 1 is now cached and trusted
        _flip(hash_file, _hash_block_offset(0, 0) + 32)
        assert reader.pread(512, 512) == payload[512:1024]
    with pytest.raises(DigestMismatchError), VerityReader(data, hash_file, root) as fresh:
        fresh.pread(512, 512)


def test_one_gpt_like_image_with_both_regions(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    payload = _payload(300 * 4096)
    data_offset, hash_offset = 1 << 20, (1 << 20) + len(payload) + 8192
    with open(image, "wb") as f:
        f.write(os.urandom(data_offset))
        f.write(payload)
        f.write(os.urandom(8192))
        f.truncate(hash_offset + 65536)
    params = VerityParams(data_blocks=300, salt=b"s")
    res = format_region(
        image, image, params, data_offset=data_offset, hash_offset=hash_offset, uuid=UUID
    )
    assert res.hash_start_block == (hash_offset + 512 + 4095) // 4096
    assert image.stat().st_size == hash_offset + 65536  # never truncated
    verify_region(image, image, res.root_hash, data_offset=data_offset, hash_offset=hash_offset)
    with VerityReader(
        image,
        image,
        res.root_hash,
        params,
        data_offset=data_offset,
        hash_offset=hash_offset,
        data_size=len(payload),
    ) as reader:
        assert reader.read() == payload


def test_params_from_a_signed_source_do_not_trust_the_superblock(
    volume: tuple[Path, Path, bytes, bytes],
) -> None:
    data, hash_file, root, payload = volume
    # an attacker rewrites the superblock; the trusted params still verify the real tree
    _flip(hash_file, 0)
    verify_region(data, hash_file, root, PARAMS)
    with VerityReader(data, hash_file, root, PARAMS) as reader:
        assert reader.read() == payload
    # and wrong trusted params are refused, not silently followed
    other = VerityParams(data_blocks=4200, data_block_size=512, hash_block_size=512, salt=b"x")
    with pytest.raises(VerificationError):
        verify_region(data, hash_file, root, other)


def test_no_superblock_region(tmp_path: Path) -> None:
    data, hash_file = tmp_path / "d", tmp_path / "h"
    data.write_bytes(_payload())
    res = format_region(data, hash_file, PARAMS, superblock=False)
    assert res.superblock is None and res.hash_start_block == 0
    verify_region(data, hash_file, res.root_hash, PARAMS, superblock=False)
    with pytest.raises(ConfigError):
        verify_region(data, hash_file, res.root_hash, superblock=False)


def test_one_block_volume(tmp_path: Path) -> None:
    data, hash_file = tmp_path / "d", tmp_path / "h"
    data.write_bytes(b"\x07" * 4096)
    params = VerityParams(data_blocks=1, algorithm=HashAlgorithm.SHA512)
    res = format_region(data, hash_file, params, uuid=UUID)
    assert res.root_hash == hashlib.sha512(b"\x07" * 4096).digest()
    assert hash_file.stat().st_size == 4096
    verify_region(data, hash_file, res.root_hash)
    with VerityReader(data, hash_file, res.root_hash) as reader:
        assert reader.read() == b"\x07" * 4096
    _flip(data, 4095)
    with pytest.raises(DigestMismatchError) as info:
        verify_region(data, hash_file, res.root_hash)
    assert (info.value.area, info.value.block) == ("data", 0)


def test_overlapping_regions_refused(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(_payload(64 * 4096))
    with pytest.raises(ConfigError):
        format_region(image, image, VerityParams(data_blocks=64), hash_offset=32 * 4096)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        format_region(tmp_path / "nope", tmp_path / "h", PARAMS)
    with pytest.raises(NotFoundError):
        read_superblock(tmp_path / "nope")


def test_reader_refuses_inconsistent_data_size(volume: tuple[Path, Path, bytes, bytes]) -> None:
    data, hash_file, root, _ = volume
    with pytest.raises(ConfigError):
        VerityReader(data, hash_file, root, PARAMS, data_size=PARAMS.data_size - 512)
    with pytest.raises(VerificationError):
        VerityReader(data, hash_file, root, data_size=PARAMS.data_size - 512)


def test_shrunk_superblock_is_refused_when_the_size_is_known(
    volume: tuple[Path, Path, bytes, bytes],
) -> None:
    data, hash_file, root, payload = volume
    # 4193 blocks give the same tree shape as 4200 (263, 17, 2, 1), so the root hash still
    # matches: the root hash does not bind the block count a superblock claims
    with open(hash_file, "r+b") as f:
        f.seek(72)
        f.write((4193).to_bytes(8, "little"))
    shrunk = verify_region(data, hash_file, root)
    assert shrunk.data_blocks == 4193
    with pytest.raises(VerificationError, match="superblock does not describe"):
        verify_region(data, hash_file, root, data_size=len(payload))
    with pytest.raises(VerificationError, match="superblock does not describe"):
        VerityReader(data, hash_file, root, data_size=len(payload))
    # trusted params ignore the superblock entirely
    verify_region(data, hash_file, root, PARAMS, data_size=len(payload))
    with pytest.raises(ConfigError):
        verify_region(data, hash_file, root, PARAMS, data_size=len(payload) - 512)


def test_unreadable_inputs_are_bastion_errors(tmp_path: Path) -> None:
    from bastion.errors import BackendError

    with pytest.raises(FormatError, match="is a directory"):
        read_superblock(tmp_path)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(BackendError, match="cannot open"):
        read_superblock(tmp_path / "file" / "x")


def test_parallel_hashing_from_a_threaded_caller(tmp_path: Path) -> None:
    import threading

    from bastion.storage import verity_reader

    data = tmp_path / "d"
    data.write_bytes(_payload())
    expected = compute_tree(data, PARAMS, workers=1)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert verity_reader._start_method() != "fork"
        results: list[object] = []
        worker = threading.Thread(
            target=lambda: results.append(
                compute_tree(data, PARAMS, workers=2, parallel_min_bytes=0)
            )
        )
        worker.start()
        worker.join(timeout=60)
        assert results == [expected]
    finally:
        stop.set()
        other.join()
