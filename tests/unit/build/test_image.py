"""The product disk ``image build`` makes (build/efi_image.py): its whole-image signature
detects one flipped bit and another key, the same inputs give the same bytes, the PCR
prediction follows the kernel, and each root filesystem type builds and verifies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.bootkit import make_tree, product_keys, spec_for, trust_of
from tests.conftest import need_tool
from tests.simefikit import need_efi_tools, sb_keys

from bastion.build.efi_image import BuiltEfiImage, EfiImageKeys, build_efi_image
from bastion.build.fs import FsType
from bastion.errors import FormatError, SignatureError
from bastion.storage import disk_image as di
from bastion.trust import image as ti


def _keys() -> EfiImageKeys:
    return EfiImageKeys(product_keys().image, sb_keys().db, sb_keys().pcr)


def _build(folder: Path, **kw: object) -> BuiltEfiImage:
    spec = spec_for(make_tree(folder / "tree"), **({"epoch": 1} | kw))
    return build_efi_image(spec, _keys(), folder / "disk.img")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltEfiImage:
    need_efi_tools()
    need_tool("mkfs.ext4")
    return _build(tmp_path_factory.mktemp("img"))


def _pcrs(image: BuiltEfiImage) -> dict[int, bytes]:
    sb = sb_keys()
    return ti.predict_efi_pcrs(image.loader, image.uki, sb.variables())


def test_image_signature_verifies_and_detects_a_flipped_bit(
    built: BuiltEfiImage, tmp_path: Path
) -> None:
    trust = trust_of(product_keys())
    assert (
        ti.verify_image_signature(di.DiskImage(built.path), trust)["sha256"] == built.sha256.hex()
    )
    copy = tmp_path / "disk.img"
    shutil.copy(built.path, copy)
    shutil.copy(built.path.with_name("disk.img.sig"), tmp_path / "disk.img.sig")
    with open(copy, "r+b") as handle:
        handle.seek(built.size // 2)
        byte = handle.read(1)
        handle.seek(built.size // 2)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(SignatureError, match="SHA-256"):
        ti.verify_image_signature(di.DiskImage(copy), trust)
    with pytest.raises(SignatureError):
        ti.verify_image_signature(di.DiskImage(built.path), trust_of(product_keys(1)))
    (tmp_path / "disk.img.sig").unlink()
    with pytest.raises(SignatureError, match="missing"):
        ti.verify_image_signature(di.DiskImage(copy), trust)


def test_reproducible(built: BuiltEfiImage, tmp_path: Path) -> None:
    again = _build(tmp_path)
    assert again.sha256 == built.sha256
    assert again.root_hash == built.root_hash
    sig_a = json.loads(built.path.with_name("disk.img.sig").read_bytes())
    sig_b = json.loads((tmp_path / "disk.img.sig").read_bytes())
    assert sig_a["payload"] == sig_b["payload"]


def test_predicted_pcrs_change_with_the_kernel(built: BuiltEfiImage, tmp_path: Path) -> None:
    pcrs = _pcrs(built)
    assert set(pcrs) == {0, 4, 7, 9, 11}
    other = _pcrs(_build(tmp_path, kernel=b"another kernel" * 64))
    # the UKI's Authenticode hash (4), its sections (11), its .pcrsig in the initrd (9)
    assert {i for i in pcrs if pcrs[i] != other[i]} == {4, 9, 11}


def test_not_an_image_refused(tmp_path: Path) -> None:
    path = tmp_path / "zero.img"
    path.write_bytes(bytes(1024 * 1024))
    with pytest.raises(FormatError):
        di.read_layout(path)


@pytest.mark.parametrize("kind", [FsType.SQUASHFS, FsType.EROFS])
def test_other_filesystems_build_and_verify(kind: FsType, tmp_path: Path) -> None:
    need_efi_tools()
    need_tool(kind.tool)
    built = _build(tmp_path, fs=kind)
    meta = ti.verify_image_signature(di.DiskImage(built.path), trust_of(product_keys()))
    assert meta["fs"] == kind.value
    layout = di.read_layout(built.path)
    assert ti.verify_efi_root(di.DiskImage(built.path), layout, built.root_hash) == "root-a"
