"""Image builder: layout, signatures, reproducibility, offline PCR prediction."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from tests.bootkit import make_tree, product_keys, spec_for, trust_of
from tests.conftest import need_tool

from bastion.build import image as img
from bastion.build.fs import FsType
from bastion.errors import FormatError, SignatureError
from bastion.formats import bootunit as bu
from bastion.formats import gpt
from bastion.storage import disk_image as di
from bastion.storage.verity_reader import verify_region
from bastion.trust import image as ti
from bastion.trust import measure


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> img.BuiltImage:
    need_tool("mkfs.ext4")
    base = tmp_path_factory.mktemp("image")
    tree = make_tree(base / "tree")
    return img.build_image(spec_for(tree), product_keys(), base / "disk.img")


def test_layout_has_dps_types_and_uuids(built: img.BuiltImage) -> None:
    layout = di.read_layout(built.path)
    names = [p.name for p in layout.partitions]
    assert names == [
        "boot",
        "root-a",
        "root-a-verity",
        "root-a-verity-sig",
        "root-b",
        "root-b-verity",
        "root-b-verity-sig",
        "bootctl",
        "data",
    ]
    root, verity = layout.find("root-a"), layout.find("root-a-verity")
    assert root.type_guid == gpt.TYPE_ROOT_X86_64
    assert verity.type_guid == gpt.TYPE_ROOT_VERITY_X86_64
    assert layout.find("root-a-verity-sig").type_guid == gpt.TYPE_ROOT_VERITY_SIG_X86_64
    assert layout.find("boot").type_guid == gpt.TYPE_XBOOTLDR
    assert (root.part_guid, verity.part_guid) == gpt.verity_partition_uuids(built.root_hash)
    assert root.attributes & gpt.FLAG_READ_ONLY
    assert all(p.offset % (1024 * 1024) == 0 for p in layout.partitions)


def test_verity_root_and_signature(built: img.BuiltImage) -> None:
    layout = di.read_layout(built.path)
    root, verity = layout.find("root-a"), layout.find("root-a-verity")
    verify_region(
        built.path, built.path, built.root_hash, data_offset=root.offset, hash_offset=verity.offset
    )
    sig = bu.parse_verity_signature(di.read_partition(built.path, layout.find("root-a-verity-sig")))
    assert ti.verify_verity_signature(sig, product_keys().verity_cert) == built.root_hash
    with pytest.raises(SignatureError):
        ti.verify_verity_signature(sig, product_keys(1).verity_cert)


def test_boot_archive_signatures(built: img.BuiltImage) -> None:
    layout = di.read_layout(built.path)
    archive = di.read_archive(built.path, layout)
    keys = trust_of(product_keys())
    doc = ti.open_statement(archive.get("loader.sig"), bu.STATEMENT_TYPE_LOADER, keys.platform_root)
    assert doc["sha256"] == hashlib.sha256(archive.get("loader")).hexdigest()
    unit_doc = ti.open_statement(archive.get("unit.a.sig"), bu.STATEMENT_TYPE_UNIT, keys.boot)
    unit = bu.parse_unit(archive.get("unit.a"))
    assert unit_doc["security_version"] == unit.security_version == 1
    assert unit.cmdline_params()["roothash"] == built.root_hash.hex()
    assert unit.cmdline_params()["bastion.slot"] == "a"
    with pytest.raises(SignatureError):
        ti.open_statement(archive.get("unit.a.sig"), bu.STATEMENT_TYPE_UNIT, keys.platform_root)
    assert ti.platform_key_hash(archive.get("loader.key")) == keys.platform_root_hash


def test_image_signature_verifies_and_detects_a_flipped_bit(
    built: img.BuiltImage, tmp_path: Path
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


def test_reproducible(built: img.BuiltImage, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    again = img.build_image(spec_for(tree), product_keys(), tmp_path / "disk.img")
    assert again.sha256 == built.sha256
    assert again.root_hash == built.root_hash
    sig_a = json.loads(built.path.with_name("disk.img.sig").read_bytes())
    sig_b = json.loads((tmp_path / "disk.img.sig").read_bytes())
    assert sig_a["payload"] == sig_b["payload"]


def test_predicted_pcrs_change_with_the_kernel(built: img.BuiltImage, tmp_path: Path) -> None:
    pcrs = ti.predict_pcrs(di.DiskImage(built.path))
    assert set(measure.GOLDEN_PCRS) <= set(pcrs)
    other = img.build_image(
        spec_for(make_tree(tmp_path / "t"), kernel=b"another kernel"),
        product_keys(),
        tmp_path / "k.img",
    )
    pcrs2 = ti.predict_pcrs(di.DiskImage(other.path))
    assert pcrs2[11] != pcrs[11]
    assert pcrs2[4] == pcrs[4] and pcrs2[7] == pcrs[7]


def test_unsigned_module_without_module_key_refused(tmp_path: Path) -> None:
    keys = product_keys()
    bare = img.ImageKeys(keys.platform_root, keys.boot, keys.image, keys.verity, keys.verity_cert)
    with pytest.raises(Exception, match="module"):
        img.make_unit(spec_for(tmp_path), bare, bytes(32), "a", data_blocks=1)


def test_not_an_image_refused(tmp_path: Path) -> None:
    path = tmp_path / "zero.img"
    path.write_bytes(bytes(1024 * 1024))
    with pytest.raises(FormatError):
        di.read_layout(path)


@pytest.mark.parametrize("kind", [FsType.SQUASHFS, FsType.EROFS])
def test_other_filesystems_build_and_verify(kind: FsType, tmp_path: Path) -> None:
    need_tool(kind.tool)
    built = img.build_image(
        spec_for(make_tree(tmp_path / "tree"), fs=kind), product_keys(), tmp_path / "disk.img"
    )
    doc = ti.verify_image(di.DiskImage(built.path), trust_of(product_keys()))
    assert doc["fs"] == kind.value and doc["slots"]["a"]["root_verified"]
