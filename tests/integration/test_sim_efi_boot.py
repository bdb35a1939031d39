"""The sim boots the real artifacts: signed systemd-boot, a signed UKI as a counted BLS
entry, a verity root and a data volume under a signed PCR 11 policy; and refuses what
Secure Boot, dbx and boot counting refuse.

One image is built per module (real stub, real systemd-boot, erofs, mtools); each test
boots its own copy as a sim device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.simefikit import (
    OSREL,
    SbKeys,
    build_image,
    dbx_hash,
    need_efi_tools,
    new_device,
    rebuilt_uki,
    sb_keys,
)

from bastion.build import disk
from bastion.device.boot import efi_chain
from bastion.device.boot.efi_chain import EfiBootChain, EfiStage
from bastion.device.platform.base import ConsoleKind
from bastion.device.platform.esp import Esp
from bastion.device.platform.sim import SimPlatform
from bastion.errors import (
    PolicyError,
    RollbackError,
    SignatureError,
    TamperError,
    VerificationError,
)
from bastion.formats import eventlog as el
from bastion.formats.efivars import SignatureList, encode_signature_lists
from bastion.formats.pe import PeImage
from bastion.formats.uki import uki_sections
from bastion.trust import pcr7, pcr_boot
from bastion.trust.pcr11 import PCR_KERNEL_IMAGE, predict_pcr11
from bastion.trust.secureboot import certificate_list

pytestmark = pytest.mark.integration

ENTRY = "EFI/Linux/bastion+3-0.efi"


@pytest.fixture(scope="module")
def keys() -> SbKeys:
    need_efi_tools()
    return sb_keys()


@pytest.fixture(scope="module")
def image(keys: SbKeys, tmp_path_factory: pytest.TempPathFactory) -> disk.VmImage:
    return build_image(tmp_path_factory.mktemp("efi-image"), keys)


def _device(tmp_path: Path, image: disk.VmImage, keys: SbKeys, dbx: bytes = b"") -> SimPlatform:
    new_device(tmp_path / "dev", image.path, keys, dbx=dbx)
    return SimPlatform(tmp_path / "dev")


def _boot(plat: SimPlatform) -> efi_chain.EfiBootReport:
    return EfiBootChain(SimPlatform(plat.folder)).run()


def _refused(plat: SimPlatform) -> tuple[VerificationError, list[str]]:
    fresh = SimPlatform(plat.folder)
    with pytest.raises(VerificationError) as info:
        EfiBootChain(fresh).run()
    return info.value, [m for k, m in fresh.console_lines if k is ConsoleKind.WARNING]


def test_signed_image_boots_to_running_and_blesses_its_entry(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    assert plat.esp().list("EFI/Linux") == ["bastion+3-0.efi"]
    first = _boot(plat)
    assert first.reached is EfiStage.RUNNING and first.secure_boot
    assert (first.entry, first.booted_as) == ("bastion+3-0.efi", "bastion+2-1.efi")
    assert first.first_boot and first.recovery_key
    assert first.root_hash == image.root_hash.hex()
    assert plat.esp().list("EFI/Linux") == ["bastion.efi"]  # systemd-bless-boot "good"
    second = _boot(plat)
    assert second.reached is EfiStage.RUNNING and not second.first_boot
    assert "data volume unlocked by the signed PCR 11 policy" in second.notes
    assert plat.fuses().counter() == 1  # BASTION_SECURITY_VERSION of .osrel


def test_pcrs_4_7_9_11_equal_the_offline_prediction(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    report = _boot(plat)
    raw = plat.load(efi_chain.EVENTLOG_FILE)
    assert raw is not None
    replayed = el.replay(el.parse(raw).events)
    variables = keys.variables()
    assert image.loader is not None
    state = pcr7.state_for_boot(
        pk=variables["PK"],
        kek=variables["KEK"],
        db=variables["db"],
        dbx=b"",
        boot_signer=keys.db.certificate,
    )
    predicted = {
        **pcr_boot.predict_boot(image.loader, image.uki),
        pcr7.PCR_SECURE_BOOT: pcr7.predict(state),
        PCR_KERNEL_IMAGE: predict_pcr11(uki_sections(image.uki)),
    }
    for pcr, value in predicted.items():
        assert replayed[pcr] == value, f"PCR {pcr}: event log differs from the prediction"
        assert report.handoff_pcrs[pcr] == value.hex(), f"PCR {pcr}: TPM differs"
    # after the kernel: systemd-pcrphase enters (the .pcrsig signs this) and leaves the initrd
    want = predict_pcr11(uki_sections(image.uki), "enter-initrd:leave-initrd")
    assert report.pcrs[PCR_KERNEL_IMAGE] == want.hex()


# --- the negative table -------------------------------------------------------------------


def test_unsigned_uki_is_refused(tmp_path: Path, image: disk.VmImage, keys: SbKeys) -> None:
    plat = _device(tmp_path, image, keys)
    plat.esp().write(ENTRY, rebuilt_uki(image.uki, signer=None))
    err, console = _refused(plat)
    assert isinstance(err, SignatureError) or "Access Denied" in str(err)
    assert str(err).startswith("systemd-boot: Error loading \\EFI\\Linux\\bastion+2-1.efi")
    assert "not signed" in str(err)
    assert any("halted" in line for line in console)


def test_uki_signed_by_a_key_outside_db_is_refused(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    plat.esp().write(ENTRY, rebuilt_uki(image.uki, signer=sb_keys(1).db))
    err, _ = _refused(plat)
    assert "Access Denied" in str(err) and "db 0" in str(err)
    assert str(err).startswith("systemd-boot: ")


def test_uki_whose_hash_is_in_dbx_is_refused(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    digest = PeImage.parse(image.uki).authenticode_digest("sha256")
    plat = _device(tmp_path, image, keys, dbx=dbx_hash(keys.owner(), digest))
    err, _ = _refused(plat)
    assert f"Authenticode SHA-256 {digest.hex()} is listed in dbx" in str(err)
    assert str(err).startswith("systemd-boot: ")


def test_db_certificate_in_dbx_refuses_even_the_boot_loader(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    dbx = encode_signature_lists([certificate_list(keys.owner(), keys.db.certificate)])  # type: ignore[arg-type]
    plat = _device(tmp_path, image, keys, dbx=dbx)
    err, _ = _refused(plat)
    assert str(err).startswith("firmware: \\EFI\\BOOT\\BOOTX64.EFI: Access Denied")
    assert "is listed in dbx" in str(err)


def test_flipped_cmdline_byte_is_refused(tmp_path: Path, image: disk.VmImage, keys: SbKeys) -> None:
    plat = _device(tmp_path, image, keys)
    data = bytearray(image.uki)
    where = data.find(b"roothash=")
    assert where > 0
    data[where + len("roothash=")] ^= 0x01
    plat.esp().write(ENTRY, bytes(data))
    err, _ = _refused(plat)
    assert "Authenticode image digest (sha256) differs" in str(err)
    assert "Access Denied" in str(err)


def _committed_older_a(esp: Esp, image: disk.VmImage, keys: SbKeys) -> None:
    """Slot a: the committed older image (version 1, signed by db), entry without a counter."""
    old = OSREL.replace(b"VERSION_ID=2", b"VERSION_ID=1")
    esp.write(
        "EFI/Linux/bastion-a.efi", rebuilt_uki(image.uki, osrel=old, signer=keys.db, pcr=keys.pcr)
    )


def test_exhausted_counter_falls_back_to_the_other_slot(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    esp = plat.esp()
    # slot a: the committed older image; slot b: the new one, all its tries used
    _committed_older_a(esp, image, keys)
    esp.rename(ENTRY, "EFI/Linux/bastion-b+0-3.efi")
    report = _boot(plat)
    assert report.entry == "bastion-a.efi" and report.version == "1"
    assert report.reached is EfiStage.RUNNING
    assert sorted(esp.list("EFI/Linux")) == ["bastion-a.efi", "bastion-b+0-3.efi"]


def test_new_slot_with_tries_left_is_booted_before_the_committed_one(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    esp = plat.esp()
    _committed_older_a(esp, image, keys)
    esp.rename(ENTRY, "EFI/Linux/bastion-b+3-0.efi")
    report = _boot(plat)
    assert (report.entry, report.version) == ("bastion-b+3-0.efi", "2")


def test_a_refused_new_slot_uses_its_tries_then_falls_back(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    esp = plat.esp()
    _committed_older_a(esp, image, keys)
    esp.remove(ENTRY)
    esp.write("EFI/Linux/bastion-b+2-0.efi", rebuilt_uki(image.uki, signer=None))
    for left in (1, 0):
        err, _ = _refused(plat)
        assert "bastion-b+" in str(err) and "not signed" in str(err)
        assert f"bastion-b+{left}-{2 - left}.efi" in esp.list("EFI/Linux")
    report = _boot(plat)
    assert report.entry == "bastion-a.efi" and report.reached is EfiStage.RUNNING


def test_both_slots_bad_halts_with_a_console_message(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    esp = plat.esp()
    esp.remove(ENTRY)
    esp.write("EFI/Linux/bastion-a+0-3.efi", rebuilt_uki(image.uki, signer=sb_keys(1).db))
    esp.write("EFI/Linux/bastion-b+0-3.efi", rebuilt_uki(image.uki, signer=None))
    err, console = _refused(plat)
    assert isinstance(err, TamperError)
    assert str(err).startswith("systemd-boot: Error loading \\EFI\\Linux\\bastion-b+0-3.efi")
    assert any(line.startswith("every entry has used its tries") for line in console)
    assert any(line.endswith("; halted") for line in console)
    # nothing was renamed: bad entries are booted as they are
    assert sorted(esp.list("EFI/Linux")) == ["bastion-a+0-3.efi", "bastion-b+0-3.efi"]


def test_stale_pcrsig_keeps_the_data_volume_locked(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    assert _boot(plat).first_boot
    old = OSREL.replace(b"VERSION_ID=2", b"VERSION_ID=3")  # new sections, the old .pcrsig
    plat.esp().write("EFI/Linux/bastion.efi", rebuilt_uki(image.uki, osrel=old, signer=keys.db))
    with pytest.raises(PolicyError, match=r"^initrd: .*no \.pcrsig entry signs the current"):
        _boot(plat)


def test_unsigned_boot_loader_is_refused_by_the_firmware(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    plat.esp().write("EFI/BOOT/BOOTX64.EFI", disk.DEFAULT_LOADER.read_bytes())
    err, _ = _refused(plat)
    assert str(err).startswith("firmware: \\EFI\\BOOT\\BOOTX64.EFI: Access Denied")


def test_security_version_below_the_fuses_is_refused(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    plat.fuses().blow_to(2)
    with pytest.raises(RollbackError, match="security version 1, below the fuse counter 2"):
        _boot(plat)


def test_tampered_root_block_is_refused_at_mount(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    root = plat.disk_layout().find(disk.PART_ROOT)
    plat.write_partition(disk.PART_ROOT, 0, bytes([plat.read_partition(disk.PART_ROOT, 1)[0] ^ 1]))
    assert root.size > 0
    with pytest.raises(VerificationError, match=r"^running: mounting the root"):
        _boot(plat)


def test_secure_boot_off_boots_an_unsigned_uki_without_an_authority(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    from bastion.device.boot_create import create_efi_device

    create_efi_device(tmp_path / "dev", image.path, {})
    plat = SimPlatform(tmp_path / "dev")
    plat.esp().write(ENTRY, rebuilt_uki(image.uki, signer=None))
    report = _boot(plat)
    assert report.reached is EfiStage.RUNNING and report.secure_boot is False
    raw = plat.load(efi_chain.EVENTLOG_FILE)
    assert raw is not None
    types = [e.event_type for e in el.parse(raw).events if e.pcr == 7]
    assert pcr7.EV_EFI_VARIABLE_AUTHORITY not in types


def test_dbx_hash_list_format(keys: SbKeys) -> None:
    data = dbx_hash(keys.owner(), bytes(32))
    (lst,) = __import__("bastion.formats.efivars", fromlist=["x"]).parse_signature_lists(data)
    assert isinstance(lst, SignatureList) and lst.signatures[0].data == bytes(32)
