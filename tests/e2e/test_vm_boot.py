"""Real boots under QEMU (TCG), OVMF and swtpm: the signed UKI reaches the verity root.

One good boot, with Secure Boot on, is shared by the checks on it (module-scoped); an
unsigned image under Secure Boot and an image with a flipped root byte (Secure Boot off,
Debian's default variables) boot once each. Each boot holds the machine-wide QEMU lock
(see conftest.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.bootkit import _cert
from tests.conftest import need_tool
from tests.e2e.conftest import BootVm, Parts, make_root

from bastion.build import datavol, device_initrd, disk, ovmf
from bastion.device.profile import make_profile
from bastion.errors import DigestMismatchError
from bastion.formats import bls, eventlog, gpt
from bastion.formats.bootlog import Outcome
from bastion.formats.uki import uki_sections
from bastion.io.qemu import BootResult
from bastion.storage.kernel_verity import CorruptionResponse
from bastion.tpm.base import HashAlg, PcrSelection, TpmKey
from bastion.tpm.swtpm import Swtpm
from bastion.tpm.tss import TssTpm
from bastion.trust import pcr7, pcr_boot, verdict
from bastion.trust.golden import GoldenValues, sign_golden, stub_components
from bastion.trust.keys import public_key_to_pem
from bastion.trust.pcr11 import DEFAULT_PHASES, PCR_KERNEL_IMAGE, predict_pcr11, verify_pcrsig
from bastion.trust.signer import SignatureScheme, SoftwareSigner, Verifier

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass(frozen=True)
class Booted:
    image: disk.VmImage
    result: BootResult
    ak: TpmKey  # the attestation key the guest quoted with
    nonce: bytes  # the nonce it was handed (QEMU fw_cfg)


def _build(
    parts: Parts,
    folder: Path,
    *,
    signed: bool = True,
    root_files: dict[str, bytes] | None = None,
    **extra: object,
) -> disk.VmImage:
    folder.mkdir(parents=True, exist_ok=True)
    root = make_root(folder / "root")
    for name, content in (root_files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    spec = disk.VmImageSpec(
        kernel=parts.kernel,
        initrd=parts.initrd,
        root_dir=root,
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
    # the device's AK, made by bastion on the TPM the guest boots with, kept in its root
    with Swtpm.start(data.tpm_state) as sw:
        tpm = TssTpm(sw.uri)
        try:
            ak = tpm.create_ak()
        finally:
            tpm.close()
    ak_files = {"etc/bastion/ak.pub": ak.public, "etc/bastion/ak.priv": ak.private}
    image = _build(
        vm_parts,
        folder,
        pcr_signer=vm_parts.pcr_signer,
        data_volume=data.path,
        root_files=ak_files,
    )
    nonce = secrets.token_bytes(20)
    result = boot_vm(
        image.path,
        folder / "run",
        sb_vars,
        tpm_state=data.tpm_state,
        extra_args=("-fw_cfg", f"name=opt/bastion/nonce,string={nonce.hex()}"),
    )
    return Booted(image, result, ak, nonce)


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
    predicted = _predicted_pcrs(booted, vm_parts, sb_vars, tmp_path)
    assert sorted(predicted) == [4, 7, 9, 11]
    for pcr, value in predicted.items():
        assert replayed[pcr] == value, f"PCR {pcr}: the boot differs from the prediction"
        assert report.pcrs["sha256"][pcr] == value, f"PCR {pcr}: the TPM differs"


def _predicted_pcrs(
    booted: Booted, vm_parts: Parts, sb_vars: bytes, folder: Path
) -> dict[int, bytes]:
    """PCRs 4, 7, 9 and 11 of the good boot, from the build outputs and the vars alone."""
    image = booted.image
    assert image.loader is not None
    (folder / "vars.fd").write_bytes(sb_vars)
    store = ovmf.read_secureboot_store(folder / "vars.fd")
    state = pcr7.state_for_boot(
        pk=store.pk,
        kek=store.kek,
        db=store.db,
        dbx=store.dbx,
        boot_signer=vm_parts.secure_boot.certificate,
    )
    return {
        **pcr_boot.predict_boot(image.loader, image.uki),
        pcr7.PCR_SECURE_BOOT: pcr7.predict(state),
        PCR_KERNEL_IMAGE: predict_pcr11(uki_sections(image.uki)),
    }


QUOTED = PcrSelection(HashAlg.SHA256, (4, 7, 9, 11))


def test_verifier_accepts_the_guest_tpm_quote_against_offline_golden_values(
    booted: Booted, vm_parts: Parts, sb_vars: bytes, tmp_path: Path
) -> None:
    report = booted.result.report
    assert set(report.quote) == {"attest", "signature"}, booted.result.reason
    assert report.eventlog is not None
    # golden values predicted offline from the build outputs, signed by a product key
    product = SoftwareSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    golden = GoldenValues(
        version="e2e-1",
        image_sha256=hashlib.sha256(booted.image.path.read_bytes()).hexdigest(),
        security_version=1,
        pcrs=_predicted_pcrs(booted, vm_parts, sb_vars, tmp_path),
        components=stub_components(uki_sections(booted.image.uki)),
    )
    evidence = verdict.Evidence(
        ak_public=booted.ak.public,
        quote=report.quote["attest"],
        signature=report.quote["signature"],
        bank=HashAlg.SHA256,
        pcrs={i: report.pcrs["sha256"][i] for i in QUOTED.indexes},
        eventlog=report.eventlog,
    )

    def judge(nonce: bytes) -> verdict.Verdict:
        return verdict.evidence_result(
            evidence.to_bytes(),
            nonce=nonce,
            ak_public=booted.ak.public,
            golden=[sign_golden(golden, product)],
            product_keys=[Verifier.of(product.public_key())],
            policy=verdict.AttestationPolicy(QUOTED),
        )

    accepted = judge(booted.nonce)
    assert accepted.ok, accepted.failures
    assert accepted.release == "e2e-1"
    # the same quote answers no other challenge
    replayed = judge(bytes(20))
    assert replayed.failure_ids == ("quote.nonce",), replayed.failures


def _corrupt_root_block(image: disk.VmImage) -> None:
    root = image.partition(disk.PART_ROOT)
    with open(image.path, "r+b") as handle:
        offset = root.offset + 2 * 4096 + 17  # inside the third data block
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def _profile_words(response: str) -> tuple[str, ...]:
    profile = make_profile(response)
    return (*disk.DEFAULT_CONSOLE, *device_initrd.verity_words(profile))


def test_halt_profile_panics_on_a_corrupted_root_block(
    vm_parts: Parts, boot_vm: BootVm, tmp_path: Path
) -> None:
    words = _profile_words("halt")
    assert "systemd.verity_root_options=panic-on-corruption" in words
    image = _build(vm_parts, tmp_path, cmdline=words)
    _corrupt_root_block(image)
    result = boot_vm(image.path, tmp_path / "run")
    serial = result.serial_log.read_text()
    assert "BASTION: verity options panic-on-corruption" in serial, serial[-3000:]
    assert result.outcome is Outcome.PANIC, (result.reason, serial[-3000:])
    # the kernel's verity message names the block, then the panic it asked for
    corrupted = re.search(r"device-mapper: verity: [0-9:]+: data block \d+ is corrupted", serial)
    assert corrupted is not None, serial[-3000:]
    assert "Kernel panic - not syncing: dm-verity device corrupted" in serial[corrupted.end() :]
    assert "BASTION: running" not in serial and "BASTION: failed" not in serial


def test_try_other_slot_profile_restarts_on_a_corrupted_root_block(
    vm_parts: Parts, boot_vm: BootVm, tmp_path: Path
) -> None:
    words = _profile_words("try-other-slot")
    assert CorruptionResponse.RESTART.value in " ".join(words)
    image = _build(vm_parts, tmp_path, cmdline=words)
    _corrupt_root_block(image)
    result = boot_vm(image.path, tmp_path / "run")
    serial = result.serial_log.read_text()
    assert "BASTION: verity options restart-on-corruption" in serial, serial[-3000:]
    corrupted = re.search(r"device-mapper: verity: [0-9:]+: data block \d+ is corrupted", serial)
    assert corrupted is not None, (result.reason, serial[-3000:])
    # the kernel restarts (QEMU runs with -no-reboot, so it exits): the entry, which
    # systemd-boot already counted down to +2-1, is never blessed and runs out of tries
    assert "reboot: Restarting system" in serial[corrupted.end() :], serial[-3000:]
    assert result.outcome is Outcome.EXITED, (result.reason, serial[-3000:])
    assert result.report.efivars["LoaderBootCountPath"] == "\\EFI\\Linux\\bastion+2-1.efi"
    assert "BASTION: running" not in serial and "BASTION: failed" not in serial


def test_audit_profile_ignores_a_corrupted_root_block_and_says_so(
    vm_parts: Parts, boot_vm: BootVm, tmp_path: Path
) -> None:
    words = (*disk.DEFAULT_CONSOLE, *device_initrd.verity_words(make_profile("halt", ("verity",))))
    assert "systemd.verity_root_options=ignore-corruption" in words
    image = _build(vm_parts, tmp_path, cmdline=words)
    _corrupt_root_block(image)
    result = boot_vm(image.path, tmp_path / "run")
    serial = result.serial_log.read_text()
    assert "BASTION: verity options ignore-corruption" in serial, serial[-3000:]
    # the kernel logged the block and went on; the init reports the audit warning
    assert re.search(r"device-mapper: verity: [0-9:]+: data block \d+ is corrupted", serial)
    assert "BASTION: warning: verity: corrupted blocks ignored (audit)" in serial
    assert result.outcome is Outcome.RUNNING, (result.reason, serial[-3000:])


def test_secure_boot_refuses_a_uki_signed_by_a_key_outside_db(
    vm_parts: Parts, sb_vars: bytes, boot_vm: BootVm, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    outsider = disk.SecureBootSigner(
        SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256), _cert(key, "not in db")
    )
    image = _build(replace(vm_parts, secure_boot=outsider), tmp_path)
    assert image.signed
    result = boot_vm(image.path, tmp_path / "run", sb_vars)
    assert result.outcome is Outcome.FIRMWARE_REFUSED, (result.reason, result.serial_log)
    assert "Access Denied" in result.reason or "Security Violation" in result.reason
    assert "BASTION:" not in result.serial_log.read_text()


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
    image = _build(vm_parts, tmp_path)  # no profile words: the kernel's default (EIO)
    _corrupt_root_block(image)
    result = boot_vm(image.path, tmp_path / "run")
    assert result.outcome is Outcome.FAILED, (result.reason, result.serial_log)
    assert result.reason.startswith("verity: reading the root failed"), result.reason
    assert "BASTION: running" not in result.serial_log.read_text()
