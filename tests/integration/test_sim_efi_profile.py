"""The signed security profile on the EFI chain (device/boot/policy.py): it must verify
against the fused platform key and name this TPM; its tamper response and audit modes
decide what a refusal does."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.bootkit import product_keys, trust_of
from tests.simefikit import OSREL, SbKeys, build_product, need_efi_tools, rebuilt_uki, sb_keys

from bastion.device.boot.efi_chain import EfiBootChain, EfiStage
from bastion.device.boot.policy import PLATFORM_KEY_FILE
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.device.profile import make_profile
from bastion.errors import RollbackError, TamperError, VerificationError

pytestmark = pytest.mark.integration

ENTRY = "EFI/Linux/bastion-1-a+3-0.efi"


@pytest.fixture(scope="module")
def keys() -> SbKeys:
    need_efi_tools()
    return sb_keys()


@pytest.fixture(scope="module")
def image(keys: SbKeys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_product(tmp_path_factory.mktemp("product"), keys, product_keys().image)


def _device(tmp_path: Path, image: Path, keys: SbKeys, response: str = "halt",
            audit: tuple[str, ...] = ()) -> SimPlatform:  # fmt: skip
    pk = product_keys()
    assert not isinstance(pk.platform_root, type(None))
    create_efi_device(
        tmp_path / "dev",
        image,
        keys.variables(),
        trust=trust_of(pk),
        profile_signer=pk.platform_root,  # type: ignore[arg-type]
        profile=make_profile(response, audit),
    )
    return SimPlatform(tmp_path / "dev")


def _boot(plat: SimPlatform) -> object:
    return EfiBootChain(SimPlatform(plat.folder)).run()


def _two_slots(plat: SimPlatform, image_uki: bytes, keys: SbKeys) -> None:
    """Slot a committed (older), slot b new but unsigned."""
    esp = plat.esp()
    old = OSREL.replace(b"VERSION_ID=2", b"VERSION_ID=1")
    esp.write("EFI/Linux/bastion-a.efi", rebuilt_uki(image_uki, osrel=old, signer=keys.db,
                                                    pcr=keys.pcr))  # fmt: skip
    esp.remove(ENTRY)
    esp.write("EFI/Linux/bastion-b+3-0.efi", rebuilt_uki(image_uki, signer=None))


def test_profile_device_boots(tmp_path: Path, image: Path, keys: SbKeys) -> None:
    plat = _device(tmp_path, image, keys)
    report = EfiBootChain(SimPlatform(plat.folder)).run()
    assert report.reached is EfiStage.RUNNING


def test_profile_of_another_device_is_refused(tmp_path: Path, image: Path, keys: SbKeys) -> None:
    plat = _device(tmp_path / "one", image, keys)
    other = _device(tmp_path / "two", image, keys)
    other.store("profile.json", plat.load("profile.json") or b"")
    with pytest.raises(TamperError, match=r"^firmware: security profile refused: it is for device"):
        _boot(other)


def test_stored_platform_key_must_match_the_fuses(
    tmp_path: Path, image: Path, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys)
    from bastion.trust.keys import public_key_to_pem

    plat.store(PLATFORM_KEY_FILE, public_key_to_pem(product_keys(1).platform_root.public_key()))  # type: ignore[union-attr]
    with pytest.raises(TamperError, match="differs from the fused"):
        _boot(plat)


def test_try_other_slot_marks_the_refused_entry_bad_and_boots_the_other(
    tmp_path: Path, image: Path, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys, "try-other-slot")
    uki = plat.esp().read(ENTRY)
    _two_slots(plat, uki, keys)
    report = EfiBootChain(SimPlatform(plat.folder)).run()
    assert report.reached is EfiStage.RUNNING and report.entry == "bastion-a.efi"
    assert any("marked bad" in n for n in report.notes)
    assert sorted(plat.esp().list("EFI/Linux")) == ["bastion-a.efi", "bastion-b+0-1.efi"]


def test_halt_keeps_the_refused_entry_counting(tmp_path: Path, image: Path, keys: SbKeys) -> None:
    plat = _device(tmp_path, image, keys, "halt")
    _two_slots(plat, plat.esp().read(ENTRY), keys)
    with pytest.raises(VerificationError, match="Access Denied"):
        _boot(plat)
    assert "bastion-b+2-1.efi" in plat.esp().list("EFI/Linux")


def test_wipe_data_on_rollback_then_the_device_needs_reprovisioning(
    tmp_path: Path, image: Path, keys: SbKeys
) -> None:
    plat = _device(tmp_path, image, keys, "wipe-data")
    assert EfiBootChain(SimPlatform(plat.folder)).run().first_boot
    plat.fuses().blow_to(5)
    with pytest.raises(RollbackError, match="data volume wiped"):
        _boot(plat)
    assert plat.state().get("reprovision") is True
    with pytest.raises(TamperError, match="re-provision"):
        _boot(plat)


def test_audited_rollback_boots_with_a_warning(tmp_path: Path, image: Path, keys: SbKeys) -> None:
    plat = _device(tmp_path, image, keys, "halt", ("rollback",))
    plat.fuses().blow_to(5)
    report = EfiBootChain(SimPlatform(plat.folder)).run()
    assert report.reached is EfiStage.RUNNING
    assert any(w.startswith("audit (rollback): stub:") for w in report.warnings)
