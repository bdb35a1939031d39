"""Hypothesis: release fields parse or fail with FormatError, and round-trip through custom."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats.raucm import FORMAT_VERITY, Manifest
from bastion.trust.tuf import release_custom, release_fields, release_meta, release_target

SHA = "ab" * 32
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.sampled_from(["version", "svn", "product", "hardware", "channel", "min_base_version"])
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,20}", fullmatch=True)


@given(st.dictionaries(keys, json_values, max_size=6) | json_values)
def test_arbitrary_custom(custom: Any) -> None:
    try:
        target = release_target("edge/stable/x", 1, {"sha256": SHA}, custom)
    except FormatError:
        return
    assert target.svn >= 0 and target.hardware


@given(st.dictionaries(st.sampled_from(["product", "svn", "hardware", "min-base-version",
                                         "golden-pcrs", "x"]), names, max_size=5))  # fmt: skip
def test_arbitrary_meta(meta: dict[str, str]) -> None:
    manifest = Manifest("c", version="1", meta=(("bastion", tuple(meta.items())),))
    try:
        release_fields(manifest)
    except FormatError:
        return


@given(names, st.integers(0, 2**32 - 1), st.lists(names, min_size=1, max_size=5, unique=True),
       st.none() | names, names)  # fmt: skip
def test_meta_round_trip(
    product: str, svn: int, hardware: list[str], base: str | None, channel: str
) -> None:
    group = release_meta(product=product, svn=svn, hardware=hardware, min_base_version=base)
    manifest = Manifest("c", version="1.0", bundle_format=FORMAT_VERITY, verity_hash=SHA,
                        verity_salt=SHA, verity_size=4096, meta=(group,))  # fmt: skip
    custom = release_custom(manifest, channel)
    target = release_target("p/c/x", 1, {"sha256": SHA}, custom)
    assert (target.product, target.svn, target.hardware) == (product, svn, tuple(hardware))
    assert (target.min_base_version, target.channel) == (base, channel)
