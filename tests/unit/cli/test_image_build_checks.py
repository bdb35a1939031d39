"""Item 21: ``image build`` refuses bad partition sizes and reserved command-line words
before it writes anything, naming the partition (or parameter) and both sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.bootkit import KERNEL, make_tree
from tests.conftest import need_tool

from bastion.build import image as img
from bastion.cli.main import main
from bastion.storage import disk_image as di


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_tool("mkfs.ext4")
    base = tmp_path_factory.mktemp("checks")
    keys = base / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    (base / "vmlinuz").write_bytes(KERNEL)
    return {"base": base, "keys": keys, "tree": make_tree(base / "tree", payload=300 * 1024)}


def _build(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "image", "build", "--rootfs", str(inputs["tree"]), "--kernel",
        str(inputs["base"] / "vmlinuz"), "--version", "1", "--security-version", "1",
        "--keys", str(inputs["keys"]), "-o", str(out), *extra,
    ]  # fmt: skip


SIZE_CASES = [
    # (extra flags, words the one-line error must contain)
    (["--data-size", "8"], ["partition data", "8388608 bytes", f"{img.DATA_MIN_SIZE} bytes"]),
    (["--data-size", "16M"], ["partition data", "16777216 bytes", str(img.DATA_MIN_SIZE)]),
    (["--data-size", "20971521B"], ["partition data", "20971521 bytes", "512-byte sector"]),
    (["--data-size", "24", "--root-size", "100K"],
     ["partition root-a", "more than the slot size 102400 bytes", "bytes, more"]),
    (["--data-size", "24", "--root-size", "400K"],
     ["partition root-a", "root filesystem is", "larger than the slot size 409600 bytes"]),
    (["--data-size", "24", "--root-size", "1000000B"],
     ["partition root-a", "1000000 bytes", "4096-byte verity block"]),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "words"), SIZE_CASES, ids=" ".join)
def test_bad_sizes_are_refused_before_writing(
    inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    words: list[str],
) -> None:
    out = tmp_path / "disk.img"
    code = main(_build(inputs, out, *extra))
    err = capsys.readouterr().err
    assert code == 9, err
    assert err.count("\n") == 1
    for word in words:
        assert word in err, (word, err)
    assert list(tmp_path.iterdir()) == []  # neither disk.img, disk.img.tmp nor .sig


CMDLINE_CASES = [
    ("roothash=" + "00" * 32, "roothash="),
    ("console=ttyS0 roothash=ab", "roothash="),
    ('"roothash=ab"', "roothash="),
    ("bastion.slot=b", "bastion.slot="),
    ("bastion.verity_blocks=1", "bastion.verity_blocks="),
    ("bastion.anything", "bastion.anything="),
    ("root=/dev/sda2", "root="),
    ("usrhash=ab", "usrhash="),
    ("mount.usr=/dev/sda3", "mount.usr="),
    ("systemd.verity=0", "systemd.verity="),
    ("rd.systemd.verity=no", "rd.systemd.verity="),
    ("systemd.verity_root_data=/dev/sdb", "systemd.verity_root_data="),
    ("quiet\tconsole=tty0\x07", "printable ASCII"),
    ("console=tty\u00e9", "printable ASCII"),
]


@pytest.mark.parametrize(("cmdline", "named"), CMDLINE_CASES)
def test_reserved_cmdline_is_refused_naming_the_parameter(
    inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cmdline: str,
    named: str,
) -> None:
    out = tmp_path / "disk.img"
    code = main(_build(inputs, out, "--data-size", "24", "--cmdline", cmdline))
    err = capsys.readouterr().err
    assert code == 9 and err.count("\n") == 1 and named in err, err
    assert list(tmp_path.iterdir()) == []


def test_allowed_cmdline_and_sizes_build(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "disk.img"
    extra = ["--data-size", "17M", "--root-size", "6M", "--cmdline", "console=ttyS0 rootwait"]
    assert main(_build(inputs, out, *extra)) == 0, capsys.readouterr().err
    layout = di.read_layout(out)
    assert layout.find("data").size == img.DATA_MIN_SIZE
    assert layout.find("root-a").size == 6 * 1024 * 1024


def test_size_argument_is_a_usage_error(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_build(inputs, tmp_path / "d.img", "--data-size", "lots")) == 9
    err = capsys.readouterr().err
    assert "usage: bastion image build" in err and "'lots' is not a size" in err
