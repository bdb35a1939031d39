"""Property tests for formats/verity.py: the superblock parser and the tree checks."""

from __future__ import annotations

import hashlib
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import DigestMismatchError, FormatError
from bastion.formats.verity import (
    SIGNATURE,
    HashAlgorithm,
    HashFormat,
    VerityParams,
    VeritySuperblock,
    build_tree,
    verify_hash_tree,
)

block_sizes = st.sampled_from([512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])

params_strategy = st.builds(
    VerityParams,
    data_blocks=st.integers(min_value=1, max_value=1 << 40),
    algorithm=st.sampled_from(list(HashAlgorithm)),
    data_block_size=block_sizes,
    hash_block_size=block_sizes,
    salt=st.binary(max_size=256),
    hash_format=st.sampled_from(list(HashFormat)),
)


@given(params_strategy, st.uuids())
def test_superblock_round_trip(params: VerityParams, ident: uuid.UUID) -> None:
    sb = VeritySuperblock(params, ident)
    raw = sb.to_bytes()
    assert len(raw) == 512
    assert VeritySuperblock.parse(raw) == sb
    assert VeritySuperblock.parse(raw).to_bytes() == raw


@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_or_format_error(raw: bytes) -> None:
    try:
        sb = VeritySuperblock.parse(raw)
    except FormatError:
        return
    assert sb.to_bytes() == raw[:512]


@given(st.binary(min_size=504, max_size=504))
def test_arbitrary_bytes_after_signature_parse_or_format_error(tail: bytes) -> None:
    try:
        VeritySuperblock.parse(SIGNATURE + tail)
    except FormatError:
        return


@settings(max_examples=60)
@given(
    st.integers(min_value=2, max_value=70),
    st.sampled_from(list(HashAlgorithm)),
    st.sampled_from(list(HashFormat)),
    st.binary(max_size=40),
    st.data(),
)
def test_tree_detects_any_flipped_hash_bit(
    blocks: int, alg: HashAlgorithm, fmt: HashFormat, salt: bytes, data: st.DataObject
) -> None:
    params = VerityParams(
        data_blocks=blocks,
        algorithm=alg,
        data_block_size=512,
        hash_block_size=512,
        salt=salt,
        hash_format=fmt,
    )
    seed = data.draw(st.binary(max_size=8))
    payload = hashlib.shake_256(seed).digest(blocks * 512)
    tree = build_tree(params, [payload])
    verify_hash_tree(params, tree.hash_area, tree.root_hash, 1)
    bit = data.draw(st.integers(min_value=0, max_value=len(tree.hash_area) * 8 - 1))
    bad = bytearray(tree.hash_area)
    bad[bit // 8] ^= 1 << (bit % 8)
    try:
        verify_hash_tree(params, bytes(bad), tree.root_hash, 1)
    except DigestMismatchError as exc:
        assert exc.area == "hash"
        assert exc.block == 1 + bit // 8 // 512
    else:
        raise AssertionError("flipped bit not detected")


@settings(max_examples=40)
@given(
    st.integers(min_value=1, max_value=300),
    st.sampled_from([512, 1024, 4096]),
    st.sampled_from([512, 4096]),
    st.lists(st.tuples(st.integers(0, 1 << 21), st.integers(0, 1 << 20)), max_size=6),
)
def test_reader_returns_exactly_the_requested_verified_slice(
    blocks: int, dbs: int, hbs: int, reads: list[tuple[int, int]]
) -> None:
    import tempfile
    from pathlib import Path

    from bastion.storage.verity_reader import VerityReader, format_region

    params = VerityParams(data_blocks=blocks, data_block_size=dbs, hash_block_size=hbs, salt=b"p")
    payload = hashlib.shake_256(f"{blocks}-{dbs}".encode()).digest(blocks * dbs)
    with tempfile.TemporaryDirectory() as tmp:
        data, hash_file = Path(tmp) / "d", Path(tmp) / "h"
        data.write_bytes(payload)
        root = format_region(data, hash_file, params).root_hash
        with VerityReader(data, hash_file, root, params, cache_blocks=2) as reader:
            for offset, length in reads:
                assert reader.pread(length, offset) == payload[offset : offset + length]
                reader.seek(offset)
                assert reader.read(length) == payload[offset : offset + length]
