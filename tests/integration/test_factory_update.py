"""ADR 0030 on a fresh device: ``device create`` writes the ``update-slots.json`` record of
the factory slot, the sim boot exports the booted entry (``update-booted.json``, as
systemd-boot's ``LoaderEntrySelected``), and ``bastion update install`` then installs
into slot b with no ``update reboot`` in between."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tests import updatekit as uk
from tests.bootkit import product_keys
from tests.simefikit import build_product, need_efi_tools, sb_keys

from bastion.cli.main import main
from bastion.device.boot.efi_chain import EfiBootChain
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.device.update import slots
from bastion.formats.uki import uki_sections

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_efi_tools()
    return build_product(tmp_path_factory.mktemp("factory"), sb_keys(), product_keys().image)


def test_create_records_the_factory_slot(image: Path, tmp_path: Path) -> None:
    plat = create_efi_device(tmp_path / "dev", image, sb_keys().variables())
    (rec,) = slots.load_records(plat).values()
    uki = plat.esp().read("EFI/Linux/bastion-1-a+3-0.efi")
    assert (rec.slot, rec.generation, rec.state, rec.bundle) == ("a", 1, "committed", "")
    assert (rec.version, rec.svn) == ("2", 1)  # the UKI's .osrel
    assert rec.uki_sha256 == hashlib.sha256(uki).hexdigest()
    root = plat.read_partition("root-a")[: rec.rootfs_size]
    assert rec.rootfs_size > 0 and rec.rootfs_size % 4096 == 0
    assert rec.rootfs_sha256 == hashlib.sha256(root).hexdigest()
    cmdline = uki_sections(uki)[".cmdline"].decode()
    assert "roothash=" in cmdline
    assert slots.booted(plat) is None  # never booted yet


def test_boot_exports_the_entry_and_update_install_works(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = tmp_path / "dev"
    create_efi_device(dev, image, sb_keys().variables())
    assert EfiBootChain(SimPlatform(dev)).run().entry == "bastion-1-a+3-0.efi"
    assert slots.booted(SimPlatform(dev)) == slots.Booted("a", "bastion-1-a", True)
    # a second boot of the blessed entry: no longer a trial
    EfiBootChain(SimPlatform(dev)).run()
    assert slots.booted(SimPlatform(dev)) == slots.Booted("a", "bastion-1-a", False)

    release = uk.make_release(tmp_path / "rel", "3", 2, b"".join(uk.rootfs_blocks(7, 8)))
    uk.KEYS.write(tmp_path)
    argv = ["update", "configure", str(dev), "--product", uk.PRODUCT, "--hardware", uk.HARDWARE]
    assert main(argv) == 0
    capsys.readouterr()
    args = ["update", "install", str(dev), str(release.bundle), "--keyring"]
    assert main([*args, str(tmp_path / "ca.pem"), "--json"]) == 0, capsys.readouterr().err
    done = json.loads(capsys.readouterr().out)
    assert done["entry"] == "bastion-2-b+3-0.efi"
    records = slots.load_records(SimPlatform(dev))
    assert records["b"].state == "trial" and records["b"].version == "3"
    assert records["a"].state == "committed"
