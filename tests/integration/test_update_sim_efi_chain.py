"""An installed slot boots through the sim's real EFI chain (no QEMU): ``image build``'s
A/B disk, a release 2 bundle made from another image's slot a, ``bastion update install``,
then the sim firmware + systemd-boot model + stub + initrd boot slot b: its root is found
by the PARTUUIDs the install gave it (the UKI's ``roothash=``, DPS) and the data volume
unlocks through the signed PCR 11 policy. tests/e2e/test_update_vm.py does the same
under QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.bundlekit import release_keys
from tests.e2e import updatevm as uv
from tests.e2e.conftest import Parts
from tests.simefikit import INITRD, KERNEL, make_root, need_efi_tools, sb_keys

from bastion.cli.main import main
from bastion.device.boot.efi_chain import EfiBootChain, EfiStage
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.device.update import slots
from bastion.formats import gpt
from bastion.formats.image import root_part, verity_part

pytestmark = pytest.mark.integration


def test_installed_slot_b_boots_through_the_sim_efi_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_efi_tools()
    sb = sb_keys()
    parts = Parts(KERNEL, INITRD, sb.db, sb.pcr)
    v1 = uv.build_image(parts, tmp_path / "v1", make_root(tmp_path / "root1"), "1", 1)
    v2 = uv.build_image(parts, tmp_path / "v2", uv.root_with_health(tmp_path / "root2"), "2", 2)
    keys = release_keys("sim-efi")
    release = uv.release_from_image(v2, tmp_path / "rel", keys, {})
    ring = tmp_path / "ring.pem"
    ring.write_bytes(keys.ca.public_bytes(serialization.Encoding.PEM))

    dev = tmp_path / "dev"
    create_efi_device(dev, v1.path, sb.variables())
    first = EfiBootChain(SimPlatform(dev)).run()
    assert first.reached is EfiStage.RUNNING and first.first_boot, first.to_json()
    configure = ["update", "configure", str(dev), "--product", uv.PRODUCT]
    assert main([*configure, "--hardware", uv.HARDWARE]) == 0
    install = ["update", "install", str(dev), str(release.bundle), "--keyring", str(ring)]
    assert main(install) == 0, capsys.readouterr().err
    layout = SimPlatform(dev).disk_layout()
    want = gpt.verity_partition_uuids(release.root_hash)
    assert (layout.find(root_part("b")).part_guid, layout.find(verity_part("b")).part_guid) == want

    booted = EfiBootChain(SimPlatform(dev)).run()
    assert booted.reached is EfiStage.RUNNING, booted.to_json()
    assert booted.entry == "bastion-2-b+3-0.efi"
    assert booted.root_hash == release.root_hash.hex()
    assert "data volume unlocked by the signed PCR 11 policy" in booted.notes
    assert slots.booted(SimPlatform(dev)) == slots.Booted("b", "bastion-2-b", True)
