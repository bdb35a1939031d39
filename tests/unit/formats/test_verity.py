"""formats/verity.py: vectors, geometry, superblock codec and the pure tree checks."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from bastion.errors import DigestMismatchError, FormatError, LimitError
from bastion.formats.verity import (
    HashAlgorithm,
    HashFormat,
    VerityHasher,
    VerityParams,
    VeritySuperblock,
    build_tree,
    build_upper_levels,
    check_data_digests,
    check_root_block,
    dm_table,
    hash_start_block,
    verify_hash_tree,
)

VECTORS = Path(__file__).parents[2] / "vectors" / "verity" / "cryptsetup-compat.json"
_DOC = json.loads(VECTORS.read_text())
SALT = bytes.fromhex(_DOC["salt"])
UUID = uuid.UUID("a60c98d2-ae9b-4865-bfcb-b4e3ace11033")


def _salt(text: str) -> bytes:
    return SALT if text == "SALT" else bytes.fromhex(text)


@pytest.mark.parametrize(
    "vec", _DOC["vectors"], ids=lambda v: f"{v['bs']}-{v['alg']}-v{v['format']}"
)
def test_cryptsetup_compat_vectors(vec: dict[str, object]) -> None:
    bs = int(str(vec["bs"]))
    data = bytes(8 << 20)
    params = VerityParams(
        data_blocks=len(data) // bs,
        algorithm=HashAlgorithm(str(vec["alg"])),
        data_block_size=bs,
        hash_block_size=bs,
        salt=_salt(str(vec["salt"])),
        hash_format=HashFormat(int(str(vec["format"]))),
    )
    assert build_tree(params, [data]).root_hash.hex() == vec["root"]


@pytest.mark.parametrize(
    ("blocks", "levels", "sizes"),
    [
        (1, 0, ()),
        (2, 1, (1,)),
        (128, 1, (1,)),
        (129, 2, (2, 1)),
        (16384, 2, (128, 1)),
        (16385, 3, (129, 2, 1)),
        (262144, 3, (2048, 16, 1)),
    ],
)
def test_geometry_matches_cryptsetup(blocks: int, levels: int, sizes: tuple[int, ...]) -> None:
    geo = VerityParams(data_blocks=blocks).geometry()
    assert geo.levels == levels
    assert geo.level_blocks == sizes
    # top level first on disk
    if levels:
        assert geo.level_offsets[-1] == 0
        assert geo.level_offsets[0] == sum(sizes[1:])


def test_geometry_of_one_gib_matches_veritysetup_hash_file_size() -> None:
    # veritysetup's hash file for 1 GiB at 4 KiB blocks is 8,462,336 bytes (toolchain notes §4)
    params = VerityParams(data_blocks=262144)
    start = hash_start_block(0, 4096)
    assert (start + params.geometry().tree_blocks) * 4096 == 8_462_336


@pytest.mark.parametrize(
    ("offset", "hbs", "superblock", "start"),
    [
        (0, 4096, True, 1),
        (0, 512, True, 1),
        (4096, 4096, True, 2),
        (8192, 4096, False, 2),
        (512, 1024, True, 1),
        (1024, 512, True, 3),
        (0, 4096, False, 0),
    ],
)
def test_hash_start_block(offset: int, hbs: int, superblock: bool, start: int) -> None:
    assert hash_start_block(offset, hbs, superblock=superblock) == start


@pytest.mark.parametrize(("offset", "superblock"), [(100, True), (-512, True), (512, False)])
def test_hash_start_block_refuses_bad_offsets(offset: int, superblock: bool) -> None:
    with pytest.raises(FormatError):
        hash_start_block(offset, 4096, superblock=superblock)


def test_one_block_root_is_the_block_digest() -> None:
    block = bytes(range(256)) * 16
    params = VerityParams(data_blocks=1, salt=b"salt")
    tree = build_tree(params, [block])
    assert tree.levels == ()
    assert tree.root_hash == hashlib.sha256(b"salt" + block).digest()
    check_root_block(params, block, tree.root_hash)
    with pytest.raises(DigestMismatchError) as info:
        check_root_block(params, b"\x01" + block[1:], tree.root_hash)
    assert (info.value.area, info.value.block) == ("data", 0)


def test_format0_appends_salt_and_packs_digests() -> None:
    params = VerityParams(
        data_blocks=3, algorithm=HashAlgorithm.SHA1, salt=b"s", hash_format=HashFormat.CHROMEOS
    )
    blocks = [bytes([i]) * 4096 for i in range(3)]
    tree = build_tree(params, blocks)
    digests = [hashlib.sha1(b + b"s").digest() for b in blocks]
    assert tree.levels[0] == b"".join(digests).ljust(4096, b"\x00")
    assert tree.root_hash == hashlib.sha1(tree.levels[0] + b"s").digest()


def test_format1_pads_sha1_digests_to_32_bytes() -> None:
    params = VerityParams(data_blocks=2, algorithm=HashAlgorithm.SHA1, salt=b"s")
    blocks = [bytes([i]) * 4096 for i in range(2)]
    level0 = build_tree(params, blocks).levels[0]
    d = [hashlib.sha1(b"s" + b).digest() for b in blocks]
    assert level0 == (d[0] + bytes(12) + d[1] + bytes(12)).ljust(4096, b"\x00")
    assert params.fanout == 128 and params.digest_stride == 32


def test_build_tree_accepts_single_blocks_or_large_buffers() -> None:
    data = bytes(range(256)) * 2 * 300
    params = VerityParams(data_blocks=300, data_block_size=512, hash_block_size=1024, salt=b"x")
    whole = build_tree(params, [data])
    single = build_tree(params, (data[i : i + 512] for i in range(0, len(data), 512)))
    assert whole == single
    assert len(whole.hash_area) == params.tree_size()


@pytest.mark.parametrize("count", [0, 299, 301])
def test_build_tree_refuses_wrong_block_count(count: int) -> None:
    params = VerityParams(data_blocks=300, data_block_size=512)
    with pytest.raises(FormatError):
        build_tree(params, [bytes(512)] * count)


def test_build_tree_refuses_partial_block() -> None:
    with pytest.raises(FormatError):
        build_tree(VerityParams(data_blocks=2, data_block_size=512), [bytes(1000)])


def test_upper_levels_refuse_wrong_level0_size() -> None:
    with pytest.raises(FormatError):
        build_upper_levels(VerityParams(data_blocks=200), bytes(4096))


# --- parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"data_blocks": 0}, FormatError),
        ({"data_blocks": 1 << 41}, LimitError),
        ({"data_block_size": 256}, FormatError),
        ({"data_block_size": 3000}, FormatError),
        ({"hash_block_size": 131072}, FormatError),
        ({"salt": bytes(257)}, LimitError),
        ({"algorithm": "md5"}, FormatError),
        ({"algorithm": "SHA256"}, FormatError),
        ({"hash_format": 2}, FormatError),
    ],
)
def test_params_refuse_bad_values(kwargs: dict[str, object], error: type[Exception]) -> None:
    args: dict[str, object] = {"data_blocks": 8, **kwargs}
    with pytest.raises(error):
        VerityParams(**args)  # type: ignore[arg-type]


def test_params_accept_algorithm_name() -> None:
    assert VerityParams(data_blocks=1, algorithm="sha512").algorithm is HashAlgorithm.SHA512  # type: ignore[arg-type]


# --- superblock -------------------------------------------------------------------------


def _sb(**kwargs: object) -> VeritySuperblock:
    args: dict[str, object] = {"data_blocks": 2048, "salt": SALT, **kwargs}
    return VeritySuperblock(VerityParams(**args), UUID)  # type: ignore[arg-type]


def test_superblock_layout() -> None:
    raw = _sb().to_bytes()
    assert len(raw) == 512
    assert raw[:8] == b"verity\x00\x00"
    assert raw[8:12] == (1).to_bytes(4, "little")
    assert raw[12:16] == (1).to_bytes(4, "little")
    assert raw[16:32] == UUID.bytes
    assert raw[32:64] == b"sha256".ljust(32, b"\x00")
    assert raw[64:68] == (4096).to_bytes(4, "little")
    assert raw[72:80] == (2048).to_bytes(8, "little")
    assert raw[80:82] == (32).to_bytes(2, "little")
    assert raw[88:120] == SALT
    assert not any(raw[120:])
    assert VeritySuperblock.parse(raw) == _sb()


def _patch(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


_RAW = _sb().to_bytes()


@pytest.mark.parametrize(
    ("name", "raw", "error"),
    [
        ("truncated", _RAW[:511], FormatError),
        ("empty", b"", FormatError),
        ("signature", _patch(_RAW, 0, b"verify\x00\x00"), FormatError),
        ("version 2", _patch(_RAW, 8, (2).to_bytes(4, "little")), FormatError),
        ("hash type 2", _patch(_RAW, 12, (2).to_bytes(4, "little")), FormatError),
        ("unknown algorithm", _patch(_RAW, 32, b"md5\x00\x00\x00"), FormatError),
        ("upper-case algorithm", _patch(_RAW, 32, b"SHA256"), FormatError),
        ("unterminated algorithm", _patch(_RAW, 32, b"s" * 32), FormatError),
        ("data block size 1000", _patch(_RAW, 64, (1000).to_bytes(4, "little")), FormatError),
        ("hash block size 128 KiB", _patch(_RAW, 68, (1 << 17).to_bytes(4, "little")), FormatError),
        ("zero data blocks", _patch(_RAW, 72, bytes(8)), FormatError),
        ("salt size 257", _patch(_RAW, 80, (257).to_bytes(2, "little")), LimitError),
        ("padding", _patch(_RAW, 400, b"\x01"), FormatError),
        ("salt tail", _patch(_RAW, 200, b"\x01"), FormatError),
    ],
)
def test_superblock_negative_table(name: str, raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        VeritySuperblock.parse(raw)


# --- the pure tree checks ---------------------------------------------------------------


def _three_level_tree() -> tuple[VerityParams, bytes, bytes]:
    # 512-byte blocks, sha256: 16 digests per block; 300 blocks -> levels of 19, 2, 1 blocks
    params = VerityParams(data_blocks=300, data_block_size=512, hash_block_size=512, salt=b"k")
    data = b"".join(hashlib.sha512(i.to_bytes(4, "little")).digest() * 8 for i in range(300))
    tree = build_tree(params, [data])
    assert params.geometry().level_blocks == (19, 2, 1)
    return params, tree.hash_area, tree.root_hash


def test_verify_hash_tree_accepts_good_tree() -> None:
    params, area, root = _three_level_tree()
    verify_hash_tree(params, area, root, 1)


@pytest.mark.parametrize(
    ("case", "byte", "block", "level"),
    [
        ("top block", 5, 1, 2),
        ("level 1 block 1", 2 * 512 + 7, 3, 1),
        ("level 0 block 0", 3 * 512, 4, 0),
        ("level 0 last block", 21 * 512 + 100, 22, 0),
    ],
)
def test_verify_hash_tree_names_flipped_block(case: str, byte: int, block: int, level: int) -> None:
    params, area, root = _three_level_tree()
    bad = bytearray(area)
    bad[byte] ^= 0x10
    with pytest.raises(DigestMismatchError) as info:
        verify_hash_tree(params, bytes(bad), root, 1)
    assert (info.value.area, info.value.block, info.value.level) == ("hash", block, level)


def test_verify_hash_tree_wrong_root_names_top_block() -> None:
    params, area, _root = _three_level_tree()
    with pytest.raises(DigestMismatchError) as info:
        verify_hash_tree(params, area, bytes(32), 1)
    assert (info.value.area, info.value.block, info.value.level) == ("hash", 1, 2)


@pytest.mark.parametrize(("root", "cut"), [(bytes(31), 0), (None, 1)])
def test_verify_hash_tree_refuses_short_inputs(root: bytes | None, cut: int) -> None:
    params, area, good = _three_level_tree()
    with pytest.raises(FormatError):
        verify_hash_tree(params, area[: len(area) - cut], good if root is None else root, 1)


@pytest.mark.parametrize("block", [0, 15, 16, 299])
def test_check_data_digests_names_the_block(block: int) -> None:
    params = VerityParams(data_blocks=300, data_block_size=512, hash_block_size=512, salt=b"k")
    hasher = VerityHasher(params)
    data = bytearray(b"".join(i.to_bytes(2, "little") * 256 for i in range(300)))
    stored = hasher.hash_blocks(data, 512)
    check_data_digests(params, stored, hasher.hash_blocks(data, 512), 300)
    data[block * 512 + 3] ^= 1
    with pytest.raises(DigestMismatchError) as info:
        check_data_digests(params, stored, hasher.hash_blocks(data, 512), 300)
    assert (info.value.area, info.value.block, info.value.level) == ("data", block, None)


def test_dm_table_line() -> None:
    params = VerityParams(data_blocks=2048, salt=b"\xab")
    line = dm_table(params, "/dev/vda", "/dev/vdb", b"\x01" * 32, 1)
    assert line == (
        "0 16384 verity 1 /dev/vda /dev/vdb 4096 4096 2048 1 sha256 " + "01" * 32 + " ab"
    )
    assert dm_table(VerityParams(data_blocks=1), "a", "b", bytes(32), 0).endswith(" -")


def test_veritysetup_hash_file_vector_byte_for_byte() -> None:
    stored = (VECTORS.parent / "veritysetup-129x512-sha256.hash").read_bytes()
    data = hashlib.shake_256(b"bastion verity vector").digest(129 * 512)
    sb = VeritySuperblock.parse(stored)
    assert sb.uuid == UUID
    assert sb.params == VerityParams(
        data_blocks=129, data_block_size=512, hash_block_size=512, salt=b"\xda\xda\xda"
    )
    tree = build_tree(sb.params, [data])
    root = "f036facef6a8db493e00348e39c79299d961641a4bef93edb1260f56ee218b31"
    assert tree.root_hash.hex() == root
    assert tree.hash_region(sb, 0) == stored
    verify_hash_tree(sb.params, stored[512:], tree.root_hash, 1)


def test_params_for_data_size() -> None:
    params = VerityParams.for_data_size(1 << 20, data_block_size=1024, salt=b"s")
    assert (params.data_blocks, params.data_block_size, params.salt) == (1024, 1024, b"s")
    with pytest.raises(FormatError):
        VerityParams.for_data_size((1 << 20) + 512)
    with pytest.raises(FormatError):
        VerityParams.for_data_size(0)
    with pytest.raises(FormatError):
        VerityParams.for_data_size(4096, data_block_size=0)
