"""The trailing layout of a RAUC bundle: signature size, bounds and verity split."""

from __future__ import annotations

import pytest

from bastion.errors import FormatError, LimitError
from bastion.formats.bundle import parse_trailer, split_verity, trailer_bytes


def test_trailer_places_signature_after_aligned_data() -> None:
    t = parse_trailer(3 * 4096 + 1000 + 8, (1000).to_bytes(8, "big"))
    assert (t.signature_offset, t.signature_size, t.signed_size) == (12288, 1000, 12288)
    assert trailer_bytes(1000) == (1000).to_bytes(8, "big")


@pytest.mark.parametrize(
    ("size", "sig", "kind", "needle"),
    [
        (8200, 0, FormatError, "is 0"),
        (8200, 8193, FormatError, "exceeds the bundle size"),
        (200_000, 65537, LimitError, "exceeds 65536"),
        (8200, 100, FormatError, "not a multiple of 4096"),
        (4, 1, FormatError, "too short"),
    ],
)
def test_trailer_refusals(size: int, sig: int, kind: type[Exception], needle: str) -> None:
    with pytest.raises(kind) as info:
        parse_trailer(size, sig.to_bytes(8, "big"))
    assert needle in str(info.value)


def test_trailer_needs_eight_bytes() -> None:
    with pytest.raises(FormatError):
        parse_trailer(100, b"\x00" * 7)


def test_split_verity() -> None:
    layout = split_verity(10 * 4096, 4096)
    assert (layout.payload_size, layout.tree_offset, layout.tree_size) == (36864, 36864, 4096)
    assert layout.data_blocks == 9


@pytest.mark.parametrize(
    ("signed", "tree", "needle"),
    [
        (10 * 4096, 0, "positive multiple"),
        (10 * 4096, 100, "positive multiple"),
        (2 * 4096, 4096, "payload bytes"),
        (10 * 4096, 20 * 4096, "payload bytes"),
        (10 * 4096 + 512, 4096, "not a multiple of 4096"),
    ],
)
def test_split_refusals(signed: int, tree: int, needle: str) -> None:
    with pytest.raises(FormatError) as info:
        split_verity(signed, tree)
    assert needle in str(info.value)
