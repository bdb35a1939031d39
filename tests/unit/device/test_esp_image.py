"""The ESP of a disk image through mtools (device/platform/esp_image.py): the Esp protocol
on a real FAT partition at an offset, and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.build import disk
from bastion.device.platform.esp_image import ImageEsp
from bastion.errors import FormatError, LimitError, NotFoundError

OFFSET = 1024 * 1024


@pytest.fixture
def esp(tmp_path: Path) -> ImageEsp:
    for tool in ("mkfs.vfat", "mcopy", "mdir", "mren", "mdel", "mmd"):
        need_tool(tool)
    fat = tmp_path / "esp.img"
    disk.build_esp(fat, {"EFI/BOOT/BOOTX64.EFI": b"loader", "EFI/Linux/a+3-0.efi": b"uki a"})
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(OFFSET) + fat.read_bytes() + bytes(OFFSET))
    return ImageEsp(image, OFFSET)


def test_list_read_write_rename_remove(esp: ImageEsp) -> None:
    assert esp.list("EFI/Linux") == ["a+3-0.efi"]
    assert esp.list("EFI") == []  # folders are not files
    assert esp.list("nope") == []
    assert esp.read("EFI/BOOT/BOOTX64.EFI") == b"loader"
    esp.rename("EFI/Linux/a+3-0.efi", "EFI/Linux/a+2-1.efi")
    assert esp.list("EFI/Linux") == ["a+2-1.efi"]
    esp.write("EFI/Linux/b+3-0.efi", b"uki b" * 1000)
    esp.write("EFI/Linux/b+3-0.efi", b"uki b, replaced")
    assert esp.read("EFI/Linux/b+3-0.efi") == b"uki b, replaced"
    esp.write("new/folder/file.conf", b"x")  # folders are made
    assert esp.list("new/folder") == ["file.conf"]
    esp.remove("EFI/Linux/a+2-1.efi")
    assert esp.list("EFI/Linux") == ["b+3-0.efi"]


def test_short_names_read_back_in_lower_case(esp: ImageEsp) -> None:
    esp.rename("EFI/Linux/a+3-0.efi", "EFI/Linux/a.efi")  # stored as A.EFI by mtools
    assert esp.list("EFI/Linux") == ["a.efi"]
    assert esp.read("EFI/Linux/a.efi") == b"uki a"


def test_rename_replaces_an_existing_target(esp: ImageEsp) -> None:
    esp.write("EFI/Linux/b.efi", b"b")
    esp.rename("EFI/Linux/a+3-0.efi", "EFI/Linux/b.efi")
    assert esp.list("EFI/Linux") == ["b.efi"]
    assert esp.read("EFI/Linux/b.efi") == b"uki a"


def test_refusals(esp: ImageEsp) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        esp.read("EFI/Linux/missing.efi")
    with pytest.raises(NotFoundError):
        esp.rename("EFI/Linux/missing.efi", "EFI/Linux/x.efi")
    with pytest.raises(NotFoundError):
        esp.remove("EFI/Linux/missing.efi")
    with pytest.raises(FormatError, match="crosses folders"):
        esp.rename("EFI/Linux/a+3-0.efi", "EFI/BOOT/a.efi")
    for bad in ("../x", "/EFI", "EFI//x", "EFI/./x", "EFI/x y"):
        with pytest.raises(FormatError, match="not a relative path"):
            esp.read(bad)
    with pytest.raises(LimitError, match="limit 3"):
        esp.read("EFI/BOOT/BOOTX64.EFI", limit=3)
    with pytest.raises(FormatError, match="offset"):
        ImageEsp(esp.image, 1000)


def test_power_cut_during_a_replace_leaves_the_old_or_the_new_file(esp: ImageEsp) -> None:
    target = "EFI/Linux/a+3-0.efi"
    # cut while the new copy was being written: NAME and a (possibly partial) NAME.new
    esp.write("EFI/Linux/scratch", b"half of a new fi")
    esp.rename("EFI/Linux/scratch", "EFI/Linux/a+3-0.efi.new")
    assert esp.list("EFI/Linux") == ["a+3-0.efi"]  # the partial copy is dropped
    assert esp.read(target) == b"uki a"
    # cut after the old file was deleted, before the rename: NAME.new alone, complete
    esp.write("EFI/Linux/scratch", b"the complete new file")
    esp.remove(target)
    esp.rename("EFI/Linux/scratch", "EFI/Linux/a+3-0.efi.new")
    assert esp.read(target) == b"the complete new file"
    assert esp.list("EFI/Linux") == ["a+3-0.efi"]
    assert esp.recover("EFI/Linux") == []
