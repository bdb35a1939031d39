"""One image, two platforms: the sim boot and the QEMU boot of the same disk file give the
same PCRs 4, 7, 9 and 11, and both equal the offline prediction.

The image is built once (real kernel, test initrd, signed systemd-boot and UKI, verity
root, a data volume sealed to the signed PCR 11 policy on a swtpm state). A copy becomes
a sim device whose firmware variables are the ones enrolled in OVMF's store and whose
TPM is a copy of the same swtpm state; QEMU boots the original (under the machine-wide
lock). The PCR values compared are the ones at the kernel's start: QEMU's replayed event
log and the TPM read by the guest initrd before it measures anything itself; the sim's
event log and its TPM at the same point.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.e2e.conftest import BootVm, Parts, make_root

from bastion.build import datavol, disk, ovmf
from bastion.device.boot import efi_chain
from bastion.device.boot.efi_chain import EfiBootChain, EfiStage
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.formats import eventlog
from bastion.formats.bootlog import Outcome
from bastion.formats.uki import uki_sections
from bastion.trust import pcr7, pcr_boot
from bastion.trust.keys import public_key_to_pem
from bastion.trust.pcr11 import PCR_KERNEL_IMAGE, predict_pcr11

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMPARED = (4, 7, 9, 11)


def test_sim_and_qemu_boot_one_image_to_the_same_pcrs(
    vm_parts: Parts, sb_vars: bytes, boot_vm: BootVm, tmp_path: Path
) -> None:
    pem = public_key_to_pem(vm_parts.pcr_signer.public_key())
    data = datavol.build_data_volume(
        tmp_path / "data.luks", tmp_path / "tpm", pem, b"recovery passphrase"
    )
    spec = disk.VmImageSpec(
        kernel=vm_parts.kernel,
        initrd=vm_parts.initrd,
        root_dir=make_root(tmp_path / "root"),
        pcr_signer=vm_parts.pcr_signer,
        data_volume=data.path,
    )
    image = disk.build_vm_image(spec, tmp_path / "disk.img", secure_boot=vm_parts.secure_boot)
    (tmp_path / "vars.fd").write_bytes(sb_vars)
    store = ovmf.read_secureboot_store(tmp_path / "vars.fd")

    # the sim device: a copy of the same disk, OVMF's enrolled variables, the same TPM
    variables = {"PK": store.pk, "KEK": store.kek, "db": store.db, "dbx": store.dbx}
    create_efi_device(tmp_path / "dev", image.path, variables, tpm="swtpm")
    shutil.copytree(data.tpm_state, tmp_path / "dev" / "swtpm", dirs_exist_ok=True)

    vm = boot_vm(image.path, tmp_path / "run", sb_vars, tpm_state=data.tpm_state)
    assert vm.outcome is Outcome.RUNNING, (vm.reason, vm.serial_log)
    assert vm.report.eventlog is not None

    sim_platform = SimPlatform(tmp_path / "dev")
    sim = EfiBootChain(sim_platform).run()
    assert sim.reached is EfiStage.RUNNING, sim.to_json()
    assert "data volume unlocked by the signed PCR 11 policy" in sim.notes
    raw = sim_platform.load(efi_chain.EVENTLOG_FILE)
    assert raw is not None

    qemu_log = eventlog.replay(eventlog.parse(vm.report.eventlog).events)
    sim_log = eventlog.replay(eventlog.parse(raw).events)
    assert image.loader is not None
    state = pcr7.state_for_boot(
        pk=store.pk,
        kek=store.kek,
        db=store.db,
        dbx=store.dbx,
        boot_signer=vm_parts.secure_boot.certificate,
    )
    predicted = {
        **pcr_boot.predict_boot(image.loader, image.uki),
        pcr7.PCR_SECURE_BOOT: pcr7.predict(state),
        PCR_KERNEL_IMAGE: predict_pcr11(uki_sections(image.uki)),
    }
    for pcr in COMPARED:
        want = predicted[pcr]
        assert qemu_log[pcr] == want, f"PCR {pcr}: the QEMU boot differs from the prediction"
        assert vm.report.pcrs["sha256"][pcr] == want, f"PCR {pcr}: the guest TPM differs"
        assert sim_log[pcr] == want, f"PCR {pcr}: the sim boot differs from the prediction"
        assert sim.handoff_pcrs[pcr] == want.hex(), f"PCR {pcr}: the sim TPM differs"
    # both boots counted and named the same entry
    assert vm.report.efivars["LoaderEntrySelected"] == sim.entry == "bastion+3-0.efi"
    assert vm.report.efivars["LoaderBootCountPath"].endswith(sim.booted_as or "?")


def test_product_image_provisioned_on_sim_boots_in_qemu(
    vm_parts: Parts, sb_vars: bytes, boot_vm: BootVm, tmp_path: Path
) -> None:
    """``image build``'s EFI disk: the sim's first boot creates the data volume under the
    UKI's signed policy and blesses the entry; QEMU then boots that very disk with the
    same TPM, unlocks the volume through the same .pcrsig, and measures the same PCRs."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from bastion.build.efi_image import EfiImageKeys, build_efi_image
    from bastion.build.fs import FsType
    from bastion.build.image import ImageSpec
    from bastion.io.qemu import setup_tpm_state
    from bastion.trust.signer import SoftwareSigner

    spec = ImageSpec(
        rootfs=make_root(tmp_path / "root"),
        kernel=vm_parts.kernel,
        initrd=vm_parts.initrd,
        cmdline=" ".join(disk.DEFAULT_CONSOLE),
        version="1.0",
        security_version=1,
        fs=FsType.EROFS,  # what the test initrd mounts
        data_size=24 * 1024 * 1024,
    )
    keys = EfiImageKeys(
        image=SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
        secure_boot=vm_parts.secure_boot,
        pcr=vm_parts.pcr_signer,
    )
    built = build_efi_image(spec, keys, tmp_path / "disk.img")
    (tmp_path / "vars.fd").write_bytes(sb_vars)
    store = ovmf.read_secureboot_store(tmp_path / "vars.fd")
    variables = {"PK": store.pk, "KEK": store.kek, "db": store.db, "dbx": store.dbx}
    dev = tmp_path / "dev"
    create_efi_device(dev, built.path, variables, tpm="swtpm")
    setup_tpm_state(dev / "swtpm")  # a manufactured TPM, sha256 bank, as QEMU's

    sim_platform = SimPlatform(dev)
    sim = EfiBootChain(sim_platform).run()
    assert sim.reached is EfiStage.RUNNING and sim.first_boot, sim.to_json()
    assert sim_platform.esp().list("EFI/Linux") == ["bastion-1-a.efi"]

    tpm = tmp_path / "qemu-tpm"
    shutil.copytree(dev / "swtpm", tpm)
    for volatile in tpm.glob("*volatile*"):
        volatile.unlink()
    vm = boot_vm(dev / "disk.img", tmp_path / "run", sb_vars, tpm_state=tpm)
    assert vm.outcome is Outcome.RUNNING, (vm.reason, vm.serial_log)
    serial = vm.serial_log.read_text()
    assert "BASTION: data unlocked" in serial, serial[-3000:]
    assert vm.report.efivars["LoaderEntrySelected"] == "bastion-1-a.efi"
    assert vm.report.eventlog is not None
    qemu_log = eventlog.replay(eventlog.parse(vm.report.eventlog).events)
    for pcr in COMPARED:
        assert qemu_log[pcr].hex() == sim.handoff_pcrs[pcr], f"PCR {pcr}: sim and QEMU differ"
