"""Item 21 at the library: ``check_cmdline`` and ``check_sizes`` refuse before building,
and ``install_slot`` refuses a reserved command-line word too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.bootkit import make_tree, spec_for

from bastion.build import image as img
from bastion.errors import ConfigError

RESERVED = [
    "roothash=ab", "usrhash=ab", "root=/dev/sda2", "root=PARTUUID=x", "mount.usr=/dev/x",
    "systemd.verity=0", "rd.systemd.verity=0", "systemd.verity_root_hash=ab",
    "rd.systemd.verity_root_data=/dev/x", "bastion.slot=b", "bastion.verity_blocks=9",
    "bastion.new", '"roothash=ab"', 'roothash="ab"', "quiet roothash=ab",
]  # fmt: skip


@pytest.mark.parametrize("word", RESERVED)
def test_reserved_words_are_refused_by_name(word: str) -> None:
    key = word.strip('"').split()[-1].partition("=")[0]
    with pytest.raises(ConfigError, match=re.escape(f"kernel command line: {key}= is reserved")):
        img.check_cmdline(f"console=ttyS0 {word}")


@pytest.mark.parametrize(
    "line", ["", "console=ttyS0 quiet", "rootwait", "rootfstype=ext4", "systemd.unit=x.target",
             "roothashes=1", "init=/sbin/init"],
)  # fmt: skip
def test_other_words_pass(line: str) -> None:
    img.check_cmdline(line)


@pytest.mark.parametrize("line", ["a\nb", "tab\there", "caf\u00e9", "bell\x07"])
def test_non_printable_or_non_ascii_is_refused(line: str) -> None:
    with pytest.raises(ConfigError, match="printable ASCII"):
        img.check_cmdline(line)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"data_size": img.DATA_MIN_SIZE - 512}, ["partition data", "smaller than"]),
        ({"data_size": img.DATA_MIN_SIZE + 1}, ["partition data", "512-byte sector"]),
        ({"root_size": 0}, ["partition root-a", "4096-byte verity block"]),
        ({"root_size": 4097}, ["partition root-a", "4097 bytes"]),
        ({"root_size": 4096}, ["partition root-a", "more than the slot size 4096 bytes"]),
    ],
)
def test_sizes(tmp_path: Path, kw: dict[str, int], words: list[str]) -> None:
    spec = spec_for(make_tree(tmp_path / "tree"), **kw)
    with pytest.raises(ConfigError) as exc:
        img.check_sizes(spec)
    for word in words:
        assert word in str(exc.value)


def test_minimum_sizes_pass(tmp_path: Path) -> None:
    img.check_sizes(spec_for(make_tree(tmp_path / "tree"), data_size=img.DATA_MIN_SIZE))
