"""``bastion image build|inspect|verify|pcrs`` end to end with a real key set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.bootkit import INITRD, KERNEL, make_tree
from tests.conftest import need_tool

from bastion.cli.main import main


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need_tool("mkfs.ext4")
    base = tmp_path_factory.mktemp("cli")
    keys = base / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    tree = make_tree(base / "tree")
    (base / "vmlinuz").write_bytes(KERNEL)
    (base / "initrd").write_bytes(INITRD)
    args = [
        "image", "build",
        "--rootfs", str(tree), "--kernel", str(base / "vmlinuz"),
        "--initrd", str(base / "initrd"), "--cmdline", "console=ttyS0",
        "--version", "1.2.3", "--security-version", "2", "--keys", str(keys),
        "--data-size", "24", "-o", str(base / "disk.img"),
    ]  # fmt: skip
    assert main(args) == 0
    return {"base": base, "keys": keys, "image": base / "disk.img"}


def test_build_writes_image_and_signature(built: dict[str, Path]) -> None:
    assert built["image"].exists()
    assert built["image"].with_name("disk.img.sig").exists()


def test_inspect_json(built: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "inspect", "--json", str(built["image"])]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in doc["partitions"]][:2] == ["esp", "root-a"]
    assert doc["esp"]["entries"] == ["bastion-1-a+3-0.efi"]


def test_verify_and_pcrs(built: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["image", "verify", "--json", "--keys", str(built["keys"]), str(built["image"])]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    (entry,) = doc["entries"].values()
    assert entry["security_version"] == 2 and doc["entries"] == {"bastion-1-a+3-0.efi": entry}
    assert entry["root"] == "root-a"  # every root block verified
    assert main(["image", "pcrs", "--json", "--keys", str(built["keys"]), str(built["image"])]) == 0
    pcrs = json.loads(capsys.readouterr().out)["pcrs"]
    assert set(pcrs) == {"0", "4", "7", "9", "11"}


def test_verify_with_other_keys_fails_one_line(
    built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert main(["keys", "init", str(other)]) == 0
    capsys.readouterr()
    code = main(["image", "verify", "--keys", str(other), str(built["image"])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "SignatureError" in err


def test_build_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["image", "build",
        "--rootfs", str(tmp_path), "--kernel", str(tmp_path / "nope"),
         "--version", "1", "--security-version", "1", "--keys", str(tmp_path), "-o",
         str(tmp_path / "x.img")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err


def test_inspect_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "z.img").write_bytes(bytes(1 << 20))
    code = main(["image", "inspect", str(tmp_path / "z.img")])
    assert code == 3 and "MBR" in capsys.readouterr().err
