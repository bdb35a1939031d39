"""Real boots under QEMU (TCG), OVMF and swtpm: the signed UKI reaches the verity root.

One good boot, with Secure Boot on, is shared by the checks on it (module-scoped); an
unsigned image under Secure Boot and an image with a flipped root byte (Secure Boot off,
Debian's default variables) boot once each. Each boot holds the machine-wide QEMU lock
(see conftest.py).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.conftest import need_tool
from tests.e2e.conftest import BootVm, Parts, make_root

from bastion.build import datavol, disk, ovmf
from bastion.errors import DigestMismatchError
from bastion.formats import bls, eventlog, gpt
from bastion.formats.bootlog import Outcome
from bastion.formats.uki import uki_sections
from bastion.io.qemu import BootResult
from bastion.trust import pcr7, pcr_boot
from bastion.trust.keys import public_key_to_pem
from bastion.trust.pcr11 import DEFAULT_PHASES, PCR_KERNEL_IMAGE, predict_pcr11, verify_pcrsig

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass(frozen=True)
class Booted:
    image: disk.VmImage
    result: BootResult


def _build(parts: Parts, folder: Path, *, signed: bool = True, **extra: object) -> disk.VmImage:
    folder.mkdir(parents=True, exist_ok=True)
    spec = disk.VmImageSpec(
        kernel=parts.kernel,
        initrd=parts.initrd,
        root_dir=make_root(folder / "root"),
        **extra,  # type: ignore[arg-type]
    )
    sb = parts.secure_boot if signed else None
    return disk.build_vm_image(spec, folder / "disk.img", secure_boot=sb)


def _data_volume(parts: Parts, folder: Path) -> datavol.DataVolume:
    """A LUKS2 data volume sealed (signed PCR 11 policy) to the TPM state in ``folder``."""
    pem = public_key_to_pem(parts.pcr_signer.public_key())
    return datavol.build_data_volume(
        folder / "data.luks", folder / "tpm", pem, b"recovery passphrase"
    )


@pytest.fixture(scope="module")
def booted(
    vm_parts: Parts, sb_vars: bytes, boot_vm: BootVm, tmp_path_factory: pytest.TempPathFactory
) -> Booted:
    """The good image, with the data volume and a .pcrsig for its own sections."""
    folder = tmp_path_factory.mktemp("good")
    data = _data_volume(vm_parts, folder)
    image = _build(vm_parts, folder, pcr_signer=vm_parts.pcr_signer, data_volume=data.path)
    return Booted(image, boot_vm(image.path, folder / "run", sb_vars, tpm_state=data.tpm_state))


def test_signed_image_boots_to_running(booted: Booted) -> None:
    result = booted.result
    assert result.outcome is Outcome.RUNNING, (result.reason, result.serial_log)
    assert "BASTION: running" in result.serial_log.read_text()
    assert result.report.root_read_only, result.report.root_mount
    assert result.report.root_mount is not None
    assert result.report.root_mount.startswith("/dev/mapper/root /sysroot erofs ")
    assert result.report.powered_off and result.qemu_exit == 0
    assert booted.image.signed


def test_data_volume_unlocks_with_the_signed_pcr11_policy(booted: Booted, vm_parts: Parts) -> None:
    serial = booted.result.serial_log.read_text()
    data = booted.image.partition(disk.PART_DATA)
    assert data.type_guid == gpt.TYPE_LINUX_DATA
    assert "BASTION: data unlocked /dev/vda4" in serial, (booted.result.reason, serial[-3000:])
    sections = uki_sections(booted.image.uki)
    key = vm_parts.pcr_signer.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert verify_pcrsig(sections, key) == list(DEFAULT_PHASES)
    # the guest measured the enter-initrd phase the .pcrsig signs, as systemd-pcrphase does
    measured = re.search(r"^BASTION: pcr11 phase enter-initrd ([0-9a-fA-F]{64})\r?$", serial, re.M)
    assert measured is not None, serial[-3000:]
    assert bytes.fromhex(measured.group(1)) == predict_pcr11(sections, "enter-initrd")


def test_systemd_boot_booted_the_counted_bls_entry(booted: Booted) -> None:
    efivars = booted.result.report.efivars
    assert efivars["LoaderInfo"].startswith("systemd-boot ")
    assert efivars["StubInfo"].startswith("systemd-stub ")
    entry = bls.parse(booted.image.uki_path.rsplit("/", 1)[1])
    assert entry.to_string() == "bastion+3-0.efi"
    assert efivars["LoaderEntrySelected"] == entry.to_string()
    # systemd-boot renamed the entry as the boot counting rules say: one try used
    renamed = "\\EFI\\Linux\\" + entry.booted().to_string()
    assert efivars["LoaderBootCountPath"] == renamed == "\\EFI\\Linux\\bastion+2-1.efi"
    # booted with our db enrolled and Secure Boot on: both signatures were checked
    assert efivars["SecureBoot"] == "1"


def test_event_log_replays_to_the_guest_pcrs(booted: Booted) -> None:
    report = booted.result.report
    assert report.eventlog is not None, "the guest dumped no event log"
    log = eventlog.parse(report.eventlog)
    replayed = eventlog.replay(log.events)
    guest = report.pcrs["sha256"]
    assert {0, 4, 7, 9, 11} <= set(replayed)
    for pcr, value in replayed.items():
        assert guest[pcr] == value, f"PCR {pcr}: event log replay differs from the TPM"


def test_tpm2_eventlog_replays_the_same(booted: Booted, tmp_path: Path) -> None:
    tool = need_tool("tpm2_eventlog")
    report = booted.result.report
    assert report.eventlog is not None
    (tmp_path / "log.bin").write_bytes(report.eventlog)
    out = subprocess.run(
        [tool, str(tmp_path / "log.bin")], capture_output=True, check=True, text=True
    ).stdout
    tail = out[out.rindex("pcrs:") :]
    theirs = {
        int(m.group(1)): bytes.fromhex(m.group(2))
        for m in re.finditer(r"^\s+(\d+)\s*: 0x([0-9a-fA-F]{64})$", tail, re.MULTILINE)
    }
    assert theirs == eventlog.replay(eventlog.parse(report.eventlog).events)


def test_pcr11_matches_the_prediction_for_the_booted_uki(booted: Booted) -> None:
    report = booted.result.report
    assert report.eventlog is not None
    replayed = eventlog.replay(eventlog.parse(report.eventlog).events)
    predicted = predict_pcr11(uki_sections(booted.image.uki))
    assert replayed[PCR_KERNEL_IMAGE] == predicted
    assert report.pcrs["sha256"][PCR_KERNEL_IMAGE] == predicted


def test_pcrs_4_7_9_11_match_the_offline_predictions(
    booted: Booted, vm_parts: Parts, sb_vars: bytes, tmp_path: Path
) -> None:
    report = booted.result.report
    assert report.eventlog is not None
    replayed = eventlog.replay(eventlog.parse(report.eventlog).events)
    image = booted.image
    assert image.loader is not None
    (tmp_path / "vars.fd").write_bytes(sb_vars)
    store = ovmf.read_secureboot_store(tmp_path / "vars.fd")
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
    assert sorted(predicted) == [4, 7, 9, 11]
    for pcr, value in predicted.items():
        assert replayed[pcr] == value, f"PCR {pcr}: the boot differs from the prediction"
        assert report.pcrs["sha256"][pcr] == value, f"PCR {pcr}: the TPM differs"


def test_secure_boot_refuses_an_unsigned_image(
    vm_parts: Parts, sb_vars: bytes, boot_vm: BootVm, tmp_path: Path
) -> None:
    image = _build(vm_parts, tmp_path, signed=False)
    result = boot_vm(image.path, tmp_path / "run", sb_vars)
    assert result.outcome is Outcome.FIRMWARE_REFUSED, (result.reason, result.serial_log)
    assert "BdsDxe" in result.reason  # the firmware refused systemd-boot itself
    assert "BASTION:" not in result.serial_log.read_text()
    assert result.seconds < 90  # stopped at the refusal, not at the time limit


def test_secure_boot_refuses_a_tampered_signed_uki(
    vm_parts: Parts, sb_vars: bytes, boot_vm: BootVm, tmp_path: Path
) -> None:
    image = _build(vm_parts, tmp_path)
    data = bytearray(image.path.read_bytes())
    where = data.find(b"console=ttyS0 panic=-1 ")
    assert where > 0 and data.find(b"console=ttyS0 panic=-1 ", where + 1) == -1
    data[where + len("console=ttyS0 panic=-")] = ord("2")  # the signed UKI's .cmdline
    image.path.write_bytes(bytes(data))
    result = boot_vm(image.path, tmp_path / "run", sb_vars)
    assert result.outcome is Outcome.FIRMWARE_REFUSED, (result.reason, result.serial_log)
    # signed systemd-boot ran; the firmware's check refused the UKI it tried to load
    assert "Error loading \\EFI\\Linux\\bastion+2-1.efi: Access Denied" in result.reason
    assert "BASTION:" not in result.serial_log.read_text()


def test_stale_pcrsig_boots_but_the_data_volume_stays_locked(
    vm_parts: Parts, sb_vars: bytes, boot_vm: BootVm, tmp_path: Path
) -> None:
    # a .pcrsig signed by the right key, for another UKI's sections (another command line)
    other = _build(
        vm_parts,
        tmp_path / "other",
        pcr_signer=vm_parts.pcr_signer,
        cmdline=(*disk.DEFAULT_CONSOLE, "bastion.other=1"),
    )
    stale = uki_sections(other.uki)
    data = _data_volume(vm_parts, tmp_path)
    image = _build(
        vm_parts,
        tmp_path / "stale",
        pcrpkey=stale[".pcrpkey"],
        pcrsig=stale[".pcrsig"],
        data_volume=data.path,
    )
    key = vm_parts.pcr_signer.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    with pytest.raises(DigestMismatchError):
        verify_pcrsig(uki_sections(image.uki), key)
    result = boot_vm(image.path, tmp_path / "run", sb_vars, tpm_state=data.tpm_state)
    serial = result.serial_log.read_text()
    # Secure Boot let it through and the root came up; the TPM refused the token
    assert result.report.efivars["SecureBoot"] == "1"
    assert result.report.root_mount is not None, (result.reason, serial[-3000:])
    assert result.outcome is Outcome.FAILED, (result.reason, serial[-3000:])
    assert result.reason.startswith("data: TPM unlock refused"), result.reason
    # systemd's token plugin found no signature for the PCR 11 value this boot reached
    assert "Couldn't find signature for this PCR bank" in result.reason, result.reason
    assert "BASTION: data unlocked" not in serial
    assert "BASTION: running" not in serial


def test_flipped_root_byte_fails_verity(vm_parts: Parts, boot_vm: BootVm, tmp_path: Path) -> None:
    image = _build(vm_parts, tmp_path)
    root = image.partition(disk.PART_ROOT)
    with open(image.path, "r+b") as handle:
        offset = root.offset + 2 * 4096 + 17  # inside the third data block
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    result = boot_vm(image.path, tmp_path / "run")
    assert result.outcome is Outcome.FAILED, (result.reason, result.serial_log)
    assert result.reason.startswith("verity: reading the root failed"), result.reason
    assert "BASTION: running" not in result.serial_log.read_text()
