"""FolderEsp: the ESP as a folder; paths checked, writes atomic, renames within a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.device.platform.esp import FolderEsp, check_path
from bastion.errors import ConfigError, FormatError, LimitError, NotFoundError


@pytest.mark.parametrize(
    "path",
    ["", "/EFI/Linux/a.efi", "EFI/../x", "EFI//x", "EFI/./x", "EFI/a b.efi", "EFI/\x00", "a\\b"],
)
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(FormatError, match="ESP path"):
        check_path(path)


def test_write_list_read_rename_remove(tmp_path: Path) -> None:
    esp = FolderEsp(tmp_path)
    assert esp.list("EFI/Linux") == []
    esp.write("EFI/Linux/bastion_2+3-0.efi", b"uki")
    esp.write("EFI/Linux/bastion_1.efi", b"old")
    (tmp_path / "EFI/Linux/sub").mkdir()
    assert esp.list("EFI/Linux") == ["bastion_1.efi", "bastion_2+3-0.efi"]
    esp.rename("EFI/Linux/bastion_2+3-0.efi", "EFI/Linux/bastion_2+2-1.efi")
    assert esp.read("EFI/Linux/bastion_2+2-1.efi") == b"uki"
    esp.remove("EFI/Linux/bastion_1.efi")
    assert esp.list("EFI/Linux") == ["bastion_2+2-1.efi"]
    assert not [p for p in (tmp_path / "EFI/Linux").iterdir() if p.name.endswith(".tmp")]


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        FolderEsp(tmp_path / "missing")
    esp = FolderEsp(tmp_path)
    with pytest.raises(NotFoundError, match="does not exist"):
        esp.read("EFI/Linux/none.efi")
    with pytest.raises(NotFoundError, match="does not exist"):
        esp.rename("EFI/Linux/none.efi", "EFI/Linux/other.efi")
    with pytest.raises(NotFoundError, match="does not exist"):
        esp.remove("EFI/Linux/none.efi")
    esp.write("EFI/Linux/a.efi", b"x" * 10)
    with pytest.raises(FormatError, match="crosses folders"):
        esp.rename("EFI/Linux/a.efi", "EFI/BOOT/a.efi")
    with pytest.raises(LimitError, match="limit is 4"):
        esp.read("EFI/Linux/a.efi", limit=4)
