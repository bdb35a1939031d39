"""LUKS2 header codec: binary header, checksum, JSON rules, choosing between copies."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import replace
from typing import Any

import pytest

from bastion.errors import FormatError, LimitError
from bastion.formats.luks2 import (
    BINARY_HEADER_SIZE,
    BinaryHeader,
    HeaderArea,
    HeaderCopy,
    Metadata,
    build_copy,
    choose_copy,
    metadata_from_json,
    parse_json_area,
)

HDR = 16384
SALT = base64.b64encode(bytes(range(32))).decode()


def _doc() -> dict[str, Any]:
    return {
        "keyslots": {
            "0": {
                "type": "luks2",
                "key_size": 64,
                "af": {"type": "luks1", "stripes": 4000, "hash": "sha256"},
                "area": {
                    "type": "raw",
                    "offset": "32768",
                    "size": "258048",
                    "encryption": "aes-xts-plain64",
                    "key_size": 64,
                },
                "kdf": {"type": "pbkdf2", "hash": "sha256", "iterations": 1000, "salt": SALT},
            }
        },
        "tokens": {"0": {"type": "bastion-test", "keyslots": ["0"], "x-extra": [1, {"a": 2}]}},
        "segments": {
            "0": {
                "type": "crypt",
                "offset": "16777216",
                "size": "dynamic",
                "iv_tweak": "0",
                "encryption": "aes-xts-plain64",
                "sector_size": 4096,
            }
        },
        "digests": {
            "0": {
                "type": "pbkdf2",
                "keyslots": ["0"],
                "segments": ["0"],
                "hash": "sha256",
                "iterations": 1000,
                "salt": SALT,
                "digest": SALT,
            }
        },
        "config": {"json_size": "12288", "keyslots_size": "16744448"},
    }


def _area(doc: dict[str, Any] | bytes, size: int = HDR - BINARY_HEADER_SIZE) -> bytes:
    text = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
    return text + b"\0" * (size - len(text))


def _binary(copy_: HeaderCopy = HeaderCopy.PRIMARY, seqid: int = 5) -> BinaryHeader:
    return BinaryHeader(
        copy=copy_,
        hdr_size=HDR,
        seqid=seqid,
        label="data",
        checksum_alg="sha256",
        salt=bytes(range(64)),
        uuid="2b4c6f2a-1111-4222-8333-444455556666",
        subsystem="bastion",
        hdr_offset=0 if copy_ is HeaderCopy.PRIMARY else HDR,
    )


def _copy_bytes(
    metadata: Metadata, copy_: HeaderCopy = HeaderCopy.PRIMARY, seqid: int = 5
) -> bytes:
    _, area, last = build_copy(_binary(copy_, seqid), metadata)
    return last + area


def test_round_trip_keeps_unknown_fields() -> None:
    m = parse_json_area(_area(_doc()))
    assert m.tokens[0].fields["x-extra"] == [1, {"a": 2}]
    again = parse_json_area(_area(m.to_bytes()))
    assert again == m
    assert json.loads(m.to_bytes()) == _doc() | {"tokens": _doc()["tokens"]}


def test_unknown_top_level_objects_are_kept() -> None:
    doc = _doc() | {"x-future": {"a": ["1"]}}
    m = parse_json_area(_area(doc))
    assert json.loads(m.to_bytes())["x-future"] == {"a": ["1"]}


def test_binary_header_round_trip_and_checksum() -> None:
    m = parse_json_area(_area(_doc()))
    data = _copy_bytes(m)
    hdr = HeaderArea.parse(data)
    assert hdr.binary.seqid == 5
    assert hdr.binary.label == "data"
    assert hdr.binary.subsystem == "bastion"
    assert hdr.metadata == m
    assert BinaryHeader.parse(data).to_bytes() == data[:BINARY_HEADER_SIZE]


def test_build_copy_write_order_pieces() -> None:
    m = parse_json_area(_area(_doc()))
    first, area, last = build_copy(_binary(), m)
    assert first[:448] == last[:448]
    assert first[448:512] == b"\0" * 64
    assert last[448:480] != b"\0" * 32
    with pytest.raises(FormatError, match="checksum"):
        HeaderArea.parse(first + area)


def _mutate(path: list[str], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_doc())
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()

JSON_NEGATIVE = [
    ("reencrypt keyslot alone", ["keyslots", "0", "type"], "reencrypt", "re-encryption"),
    ("kdf not an object", ["keyslots", "0", "kdf"], 42, "object"),
    ("kdf type empty", ["keyslots", "0", "kdf", "type"], "", "empty"),
    ("pbkdf2 without hash", ["keyslots", "0", "kdf", "hash"], _DELETE, "needs 'hash'"),
    ("af type", ["keyslots", "0", "af", "type"], 42, "af.type"),
    ("area type", ["keyslots", "0", "area", "type"], "journal", "area type"),
    ("area cipher empty", ["keyslots", "0", "area", "encryption"], "", "empty"),
    ("area outside", ["keyslots", "0", "area", "offset"], "4096", "outside"),
    ("iterations not int", ["keyslots", "0", "kdf", "iterations"], "1000", "integer"),
    ("key_size negative", ["keyslots", "0", "key_size"], -1, "integer"),
    ("u64 not string", ["segments", "0", "offset"], 16777216, "string"),
    ("u64 negative", ["segments", "0", "offset"], "-1", "string-uint64"),
    ("u64 newline", ["segments", "0", "offset"], "16777216\n", "string-uint64"),
    ("u64 too long", ["segments", "0", "offset"], "9" * 5000, "64 bits"),
    ("bad base64", ["digests", "0", "salt"], "!!!", "base64"),
    ("digest missing keyslot", ["digests", "0", "keyslots"], ["0", "7"], "missing keyslot"),
    ("keyslot in no digest", ["digests", "0", "keyslots"], [], "named by 0 digests"),
    (
        "keyslot in two digests",
        ["digests", "1"],
        {
            "type": "pbkdf2",
            "keyslots": ["0"],
            "segments": [],
            "hash": "sha256",
            "iterations": 1000,
            "salt": SALT,
            "digest": SALT,
        },
        "named by 2 digests",
    ),
    ("token missing keyslot", ["tokens", "0", "keyslots"], ["3"], "missing keyslot"),
    ("token type empty", ["tokens", "0", "type"], "", "empty"),
    ("json_size mismatch", ["config", "json_size"], "28672", "json_size"),
    ("keyslots_size unaligned", ["config", "keyslots_size"], "1000", "aligned"),
    ("segment in metadata", ["segments", "0", "offset"], "32768", "inside the metadata"),
    ("integrity incomplete", ["segments", "0", "integrity"], {"type": "hmac"}, "integrity"),
    ("sector size", ["segments", "0", "sector_size"], 3000, "multiple of 512"),
    ("segment flags", ["segments", "0", "flags"], ["a", 1], "list of strings"),
    ("segment size zero", ["segments", "0", "size"], "0", "zero"),
    ("no segments", ["segments"], {}, "empty"),
    ("missing config", ["config"], _DELETE, "config"),
    ("bad keyslot id", ["keyslots", "x"], {}, "id"),
    ("segment without digest", ["digests", "0", "segments"], [], "no digest"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [pytest.param(p, v, msg, id=name) for name, p, v, msg in JSON_NEGATIVE],
)
def test_json_negative(path: list[str], value: Any, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_json_area(_area(_mutate(path, value)))


AREA_NEGATIVE = [
    ("bytes after NUL", _area(_doc())[:-1] + b"x", "non-NUL"),
    ("no NUL", None, "NUL"),
    ("not an object", _area(b"[1,2]"), "start"),
    ("duplicate key", _area(b'{"keyslots":{},"keyslots":{}}'), "duplicate"),
    ("invalid json", _area(b"{nope"), "not valid JSON"),
    ("too deep", _area(b'{"a":' * 40 + b"1" + b"}" * 40), "deeper"),
    ("invalid utf-8", _area(b'{"\xff":1}'), "not valid JSON"),
]


@pytest.mark.parametrize(
    ("area", "message"), [pytest.param(a, m, id=n) for n, a, m in AREA_NEGATIVE]
)
def test_json_area_negative(area: bytes | None, message: str) -> None:
    if area is None:
        text = json.dumps(_doc()).encode()
        area = text + b" " * (HDR - BINARY_HEADER_SIZE - len(text))
    with pytest.raises(FormatError, match=message):
        parse_json_area(area)


def test_too_many_tokens_is_a_limit_error() -> None:
    doc = _doc()
    doc["tokens"] = {str(i): {"type": "t", "keyslots": []} for i in range(33)}
    with pytest.raises(FormatError):
        metadata_from_json(doc)


def test_oversized_json_refused_on_write() -> None:
    doc = _doc()
    doc["tokens"]["0"]["blob"] = "A" * 13000
    m = metadata_from_json(doc)
    with pytest.raises(LimitError, match="JSON area holds"):
        build_copy(_binary(), m)


BINARY_NEGATIVE = [
    ("bad magic", 0, b"LUKZ", "magic"),
    ("bad version", 6, b"\x00\x01", "version"),
    ("bad hdr_size", 8, (5000).to_bytes(8, "big"), "hdr_size"),
    ("bad hdr_offset", 256, (512).to_bytes(8, "big"), "hdr_offset"),
    ("bad checksum alg", 72, b"md4\0\0\0\0", "checksum"),
    ("flipped label bit", 30, b"\x01", "checksum"),
    ("flipped json bit", 4200, b"\x20", "checksum|JSON"),
]


@pytest.mark.parametrize(
    ("offset", "patch", "message"), [pytest.param(o, p, m, id=n) for n, o, p, m in BINARY_NEGATIVE]
)
def test_binary_negative(offset: int, patch: bytes, message: str) -> None:
    data = bytearray(_copy_bytes(parse_json_area(_area(_doc()))))
    if len(patch) == 1:
        data[offset] ^= patch[0]
    else:
        data[offset : offset + len(patch)] = patch
    with pytest.raises(FormatError, match=message):
        HeaderArea.parse(bytes(data))


def test_truncated_copy() -> None:
    data = _copy_bytes(parse_json_area(_area(_doc())))
    for cut in (0, 100, BINARY_HEADER_SIZE, HDR - 1):
        with pytest.raises(FormatError):
            HeaderArea.parse(data[:cut])


def test_secondary_magic_and_offset() -> None:
    m = parse_json_area(_area(_doc()))
    data = _copy_bytes(m, HeaderCopy.SECONDARY)
    assert data.startswith(b"SKUL\xba\xbe")
    assert HeaderArea.parse(data, expect=HeaderCopy.SECONDARY).binary.hdr_offset == HDR
    with pytest.raises(FormatError, match="expected the primary"):
        HeaderArea.parse(data, expect=HeaderCopy.PRIMARY)


def _parsed(copy_: HeaderCopy, seqid: int, doc: dict[str, Any] | None = None) -> HeaderArea:
    m = parse_json_area(_area(doc or _doc()))
    return HeaderArea.parse(_copy_bytes(m, copy_, seqid))


def test_choose_copy_table() -> None:
    bad = FormatError("broken")
    p5, s5 = _parsed(HeaderCopy.PRIMARY, 5), _parsed(HeaderCopy.SECONDARY, 5)
    p6, s6 = _parsed(HeaderCopy.PRIMARY, 6), _parsed(HeaderCopy.SECONDARY, 6)
    assert choose_copy(p5, s5).stale is None
    assert choose_copy(p5, s5).winner is p5
    assert choose_copy(bad, s5).winner is s5
    assert choose_copy(bad, s5).stale is HeaderCopy.PRIMARY
    assert choose_copy(p5, bad).stale is HeaderCopy.SECONDARY
    assert choose_copy(p5, s6).winner is s6
    assert choose_copy(p5, s6).stale is HeaderCopy.PRIMARY
    assert choose_copy(p6, s5).winner is p6
    other = _mutate(["tokens", "0", "type"], "other")
    differ = choose_copy(p5, _parsed(HeaderCopy.SECONDARY, 5, other))
    assert differ.winner is p5
    assert differ.stale is HeaderCopy.SECONDARY
    with pytest.raises(FormatError, match="both header copies"):
        choose_copy(bad, FormatError("also broken"))


def test_metadata_helpers() -> None:
    m = parse_json_area(_area(_doc()))
    assert m.free_keyslot_id() == 1
    assert m.free_token_id() == 1
    assert m.digest_for_keyslot(0)[0] == 0
    with pytest.raises(FormatError):
        m.digest_for_keyslot(3)
    with pytest.raises(FormatError):
        m.with_changes(keyslots={})
    assert replace(m, tokens={}).tokens == {}


def test_json_text_is_raw_utf8_like_json_c() -> None:
    doc = _doc()
    doc["tokens"]["0"]["name"] = "données/é"
    m = parse_json_area(_area(json.dumps(doc).encode()))
    assert '"name":"données/é"'.encode() in m.to_bytes()
    assert parse_json_area(_area(m.to_bytes())) == m
    # a lone surrogate has no UTF-8 form: the strict loader refuses it (a deliberate
    # difference from json-c, which cryptsetup uses; see docs/storage.md)
    doc["tokens"]["0"]["name"] = "\ud800"
    with pytest.raises(FormatError, match="lone surrogate"):
        parse_json_area(_area(json.dumps(doc).encode()))
