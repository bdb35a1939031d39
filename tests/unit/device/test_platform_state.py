"""device/platform/state.py: one store and one EFI variable folder for sim and linux."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.device.platform.sim import SimPlatform, create_sim_folder
from bastion.device.platform.state import EfiVarFolder, FolderStore
from bastion.errors import ConfigError, FormatError, LimitError
from bastion.limits import PLATFORM_EFI_VAR_MAX_SIZE

VAR = "db-d719b2cb-3d3a-4596-a3bc-dad00e67656f"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 129, "a\nb"])
def test_store_refuses_names_that_are_not_plain(tmp_path: Path, bad: str) -> None:
    store = FolderStore(tmp_path / "s")
    with pytest.raises(ConfigError, match="store name"):
        store.store(bad, b"x")
    with pytest.raises(ConfigError, match="store name"):
        store.load(bad)
    assert not (tmp_path / "s").exists()


def test_store_state_flags_and_bounds(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "s")
    assert store.load("boot.json") is None and store.state() == {}
    store.set_state(reprovision=True)
    store.set_state(data_volume=1)
    assert store.state() == {"reprovision": True, "data_volume": 1}
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    (tmp_path / "s" / "state.json").write_bytes(b"[1]")
    with pytest.raises(FormatError):
        store.state()
    (tmp_path / "s" / "big").write_bytes(bytes(16 * 1024 * 1024 + 1))
    with pytest.raises(LimitError):
        store.load("big")


def test_efi_variables_by_efivarfs_name(tmp_path: Path) -> None:
    vars_ = EfiVarFolder(tmp_path / "efivars")
    assert vars_.read(VAR) is None
    vars_.write(VAR, b"\x27\x00\x00\x00db")
    assert vars_.read(VAR) == b"\x27\x00\x00\x00db"
    for bad in ("db", "../db-d719b2cb-3d3a-4596-a3bc-dad00e67656f", "db-nope"):
        with pytest.raises(ConfigError, match="Name-VendorGuid"):
            vars_.read(bad)
        with pytest.raises(ConfigError, match="Name-VendorGuid"):
            vars_.write(bad, b"x")
    (tmp_path / "efivars" / VAR).write_bytes(bytes(PLATFORM_EFI_VAR_MAX_SIZE + 1))
    with pytest.raises(LimitError):
        vars_.read(VAR)


def test_sim_store_is_the_device_folder_and_refuses_paths(tmp_path: Path) -> None:
    plat = create_sim_folder(tmp_path / "dev", "software")
    plat.set_state(reprovision=True)
    assert SimPlatform(tmp_path / "dev").state() == {"reprovision": True}
    assert (tmp_path / "dev" / "state.json").exists()
    with pytest.raises(ConfigError, match="store name"):
        plat.store("../outside", b"x")
    assert not (tmp_path / "outside").exists()
