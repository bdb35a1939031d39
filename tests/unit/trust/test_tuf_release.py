"""Release fields: the manifest's [meta.bastion], a target's custom metadata, the choice."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.errors import (
    ConfigError,
    FormatError,
    IncompatibleError,
    LimitError,
    RollbackError,
)
from bastion.formats.raucm import FORMAT_VERITY, Manifest
from bastion.trust.tuf import (
    ReleaseTarget,
    check_release,
    pick_release,
    release_custom,
    release_fields,
    release_meta,
    release_target,
    version_key,
)

SHA = "ab" * 32


def _manifest(meta: dict[str, str] | None, version: str | None = "2.0") -> Manifest:
    groups = () if meta is None else (("bastion", tuple(meta.items())),)
    return Manifest(
        compatible="bastion-edge",
        version=version,
        bundle_format=FORMAT_VERITY,
        verity_hash="cd" * 32,
        verity_salt="ef" * 32,
        verity_size=4096,
        meta=groups,
    )


def _target(version: str, svn: int, **kw: Any) -> ReleaseTarget:
    custom = {"version": version, "svn": svn, "product": "edge", "hardware": ["hw1"],
              "channel": "stable", "min_base_version": None} | kw  # fmt: skip
    return release_target(f"edge/stable/{version}.raucb", 10, {"sha256": SHA}, custom)


def test_meta_round_trip_into_custom() -> None:
    label, pairs = release_meta(product="edge", svn=5, hardware=["hw1", "hw2"],
                                min_base_version="1.0", golden_pcrs={7: "aa" * 32})  # fmt: skip
    custom = release_custom(_manifest(dict(pairs)), "stable")
    assert label == "bastion"
    assert custom["svn"] == 5
    assert custom["hardware"] == ["hw1", "hw2"]
    assert custom["golden_pcrs"] == {"7": "aa" * 32}
    assert custom["verity"] == {"hash": "cd" * 32, "salt": "ef" * 32, "size": 4096}
    assert custom["min_base_version"] == "1.0"
    target = release_target("edge/stable/x", 1, {"sha256": SHA}, custom)
    assert (target.product, target.channel, target.svn) == ("edge", "stable", 5)


@pytest.mark.parametrize(
    ("meta", "error", "match"),
    [
        ({"svn": "-1"}, FormatError, "not an unsigned integer"),
        ({"svn": "99999999999"}, FormatError, "0..2"),
        ({"product": "a b"}, FormatError, "letters, digits"),
        ({"hardware": ""}, FormatError, "expected 1-"),
        ({"hardware": ",".join(f"h{i}" for i in range(65))}, LimitError, "hardware names"),
        ({"golden-pcrs": "7=zz"}, FormatError, "PCR=HEX"),
        ({"golden-pcrs": "24=" + "aa" * 32}, FormatError, "PCR=HEX"),
        ({"unknown": "x"}, FormatError, "unknown key"),
    ],
)
def test_meta_negative_table(meta: dict[str, str], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        release_fields(_manifest(meta))


def test_custom_needs_the_fields_and_refuses_contradictions() -> None:
    with pytest.raises(ConfigError, match="no product"):
        release_custom(_manifest(None), "stable")
    with pytest.raises(ConfigError, match="no version"):
        release_custom(_manifest({"product": "e", "svn": "1", "hardware": "h"}, None), "s")
    filled = release_custom(
        _manifest(None), "stable", {"product": "e", "svn": 1, "hardware": ["h"]}
    )
    assert filled["product"] == "e"
    with pytest.raises(ConfigError, match="the signed manifest says 1"):
        release_custom(_manifest({"product": "e", "svn": "1", "hardware": "h"}), "s", {"svn": 2})


@pytest.mark.parametrize(
    ("custom", "match"),
    [
        (None, "no release metadata"),
        ({"version": "1", "svn": True, "product": "e", "hardware": ["h"]}, "svn"),
        ({"version": "1", "svn": 1, "product": "e", "hardware": "h"}, "not a list"),
        ({"version": "1", "svn": 1, "product": "e", "hardware": [], "channel": "s"}, "no hardware"),
        ({"version": "1" * 200, "svn": 1, "product": "e", "hardware": ["h"]}, "version"),
    ],
)
def test_target_negative_table(custom: Any, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        release_target("p", 1, {"sha256": SHA}, custom)


def test_target_needs_sha256() -> None:
    good = {"version": "1", "svn": 1, "product": "e", "hardware": ["h"], "channel": "s"}
    with pytest.raises(FormatError, match="sha256"):
        release_target("p", 1, {"sha512": SHA}, good)


def test_version_order() -> None:
    assert version_key("2026.12.10") > version_key("2026.12.9")
    assert version_key("1.0") < version_key("1.0.1")


def test_pick_newest_allowed() -> None:
    targets = [_target("1.0", 3), _target("1.1", 3), _target("0.9", 2), _target("2.0", 4,
               hardware=["hw2"]), _target("1.2", 3, channel="beta")]  # fmt: skip

    def pick(svn: int, ver: str | None) -> ReleaseTarget | None:
        return pick_release(targets, product="edge", hardware="hw1", channel="stable",
                            current_svn=svn, current_version=ver)  # fmt: skip

    assert pick(3, "1.0").version == "1.1"  # type: ignore[union-attr]
    assert pick(0, None).version == "1.1"  # type: ignore[union-attr]
    assert pick(3, "1.1") is None  # nothing newer
    assert pick(4, None) is None  # svn 4 is for other hardware


@pytest.mark.parametrize(
    ("target", "kw", "error", "match"),
    [
        (_target("1", 1, product="other"), {}, IncompatibleError, "for product 'other'"),
        (_target("1", 1), {"hardware": "hw9"}, IncompatibleError, "not 'hw9'"),
        (_target("1", 1, channel="beta"), {}, IncompatibleError, "channel 'beta'"),
        (_target("1", 1), {"current_svn": 2}, RollbackError, "below the device's 2"),
        (_target("1", 1), {"current_svn": 1, "current_version": "1"}, RollbackError, "not newer"),
        (_target("2", 1, min_base_version="1.5"), {"current_version": "1.0"}, IncompatibleError,
         "at least version 1.5"),
        (_target("2", 1, min_base_version="1.5"), {}, IncompatibleError, "unknown version"),
    ],
)  # fmt: skip
def test_check_release_negative_table(
    target: ReleaseTarget, kw: dict[str, Any], error: type[Exception], match: str
) -> None:
    args: dict[str, Any] = {"product": "edge", "hardware": "hw1", "channel": "stable",
                            "current_svn": 0, "current_version": None} | kw  # fmt: skip
    with pytest.raises(error, match=match):
        check_release(target, **args)
