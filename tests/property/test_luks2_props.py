"""Hypothesis on the LUKS2 parsers: round trips; arbitrary bytes give an object or FormatError."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats.luks2 import (
    BINARY_HEADER_SIZE,
    BinaryHeader,
    HeaderArea,
    HeaderCopy,
    Token,
    build_copy,
    metadata_from_json,
    parse_json_area,
)

HDR = 16384
JSON_SIZE = HDR - BINARY_HEADER_SIZE
b64 = st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    nslots = draw(st.integers(1, 3))
    slots = {}
    for i in range(nslots):
        kdf: dict[str, Any]
        if draw(st.booleans()):
            kdf = {
                "type": "pbkdf2",
                "hash": draw(st.sampled_from(["sha1", "sha256", "sha512"])),
                "iterations": draw(st.integers(1000, 2**31 - 1)),
                "salt": draw(b64),
            }
        else:
            kdf = {
                "type": draw(st.sampled_from(["argon2i", "argon2id"])),
                "time": draw(st.integers(4, 100)),
                "memory": draw(st.integers(32, 1 << 20)),
                "cpus": draw(st.integers(1, 4)),
                "salt": draw(b64),
            }
        slots[str(i)] = {
            "type": "luks2",
            "key_size": 64,
            "af": {"type": "luks1", "stripes": 4000, "hash": "sha256"},
            "area": {
                "type": "raw",
                "offset": str(32768 + i * 258048),
                "size": "258048",
                "encryption": "aes-xts-plain64",
                "key_size": 64,
            },
            "kdf": kdf,
        }
        if draw(st.booleans()):
            slots[str(i)]["priority"] = draw(st.integers(0, 2))
    tokens = {
        str(i): {
            "type": draw(st.text("abcdefgh-", min_size=1, max_size=12)),
            "keyslots": [str(k) for k in draw(st.sets(st.integers(0, nslots - 1)))],
            **draw(
                st.dictionaries(st.sampled_from(["x", "y", "tpm2-blob"]), json_value, max_size=2)
            ),
        }
        for i in draw(st.sets(st.integers(0, 31), max_size=3))
    }
    return {
        "keyslots": slots,
        "tokens": tokens,
        "segments": {
            "0": {
                "type": "crypt",
                "offset": "16777216",
                "size": "dynamic",
                "iv_tweak": str(draw(st.integers(0, 2**64 - 1))),
                "encryption": "aes-xts-plain64",
                "sector_size": draw(st.sampled_from([512, 1024, 2048, 4096])),
            }
        },
        "digests": {
            "0": {
                "type": "pbkdf2",
                "keyslots": list(slots),
                "segments": ["0"],
                "hash": "sha256",
                "iterations": draw(st.integers(1000, 10**6)),
                "salt": draw(b64),
                "digest": draw(b64),
            }
        },
        "config": {"json_size": str(JSON_SIZE), "keyslots_size": "16744448"},
    }


def _area(text: bytes) -> bytes:
    return text + b"\0" * (JSON_SIZE - len(text))


@settings(max_examples=60)
@given(documents())
def test_json_round_trip(doc: dict[str, Any]) -> None:
    m = parse_json_area(_area(json.dumps(doc).encode()))
    assert json.loads(m.to_bytes()) == doc
    assert parse_json_area(_area(m.to_bytes())) == m


@settings(max_examples=60)
@given(documents(), st.integers(0, 2**64 - 1), st.text("abc-", max_size=40))
def test_header_round_trip(doc: dict[str, Any], seqid: int, label: str) -> None:
    m = metadata_from_json(doc)
    for copy in HeaderCopy:
        binary = BinaryHeader(
            copy,
            HDR,
            seqid,
            label,
            "sha256",
            bytes(64),
            "u-u-i-d",
            "",
            0 if copy is HeaderCopy.PRIMARY else HDR,
        )
        _, area, last = build_copy(binary, m)
        parsed = HeaderArea.parse(last + area)
        assert parsed.metadata == m
        assert parsed.binary.seqid == seqid
        assert parsed.binary.label == label


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_json_area(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        parse_json_area(_area(data[: JSON_SIZE - 1]) if b"\0" not in data else data)


@given(st.binary(min_size=0, max_size=HDR + 10))
def test_arbitrary_header_bytes(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        HeaderArea.parse(data)


@settings(max_examples=80)
@given(documents(), st.integers(0, HDR - 1), st.integers(1, 255))
def test_any_flipped_byte_is_detected(doc: dict[str, Any], offset: int, xor: int) -> None:
    m = metadata_from_json(doc)
    binary = BinaryHeader(HeaderCopy.PRIMARY, HDR, 1, "", "sha256", bytes(64), "u", "", 0)
    _, area, last = build_copy(binary, m)
    data = bytearray(last + area)
    data[offset] ^= xor
    try:
        parsed = HeaderArea.parse(bytes(data))
    except FormatError:
        return
    raise AssertionError(f"flip at {offset} accepted: {parsed.binary}")


@settings(max_examples=100)
@given(json_value)
def test_arbitrary_json_values_as_tokens(value: Any) -> None:
    with contextlib.suppress(FormatError):
        Token.from_json(value, "token")


def _paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    return out


@settings(max_examples=300)
@given(documents(), st.data())
def test_any_field_replaced_gives_metadata_or_format_error(
    doc: dict[str, Any], data: st.DataObject
) -> None:
    """A valid document with one field replaced by any JSON value (or deleted): parsed,
    possibly with an unusable keyslot or unsupported segment, or FormatError; never
    another exception, and what parses writes back to the same metadata."""
    path = data.draw(st.sampled_from(_paths(doc)))
    node = doc
    for key in path[:-1]:
        node = node[key]
    if data.draw(st.booleans()):
        del node[path[-1]]
    else:
        node[path[-1]] = data.draw(json_value)
    try:
        m = parse_json_area(_area(json.dumps(doc).encode()))
    except FormatError:
        return
    assert parse_json_area(_area(m.to_bytes())) == m
