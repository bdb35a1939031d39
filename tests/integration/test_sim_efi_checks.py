"""The sim checks what real firmware and kernels check (ADR 0039), on a real signed disk:
db entries that are image hashes (an unsigned UKI whose hash is in db boots, in db and
dbx it is refused), and module signatures under ``module.sig_enforce`` (an unsigned
module and one signed by an untrusted key are refused, the boot goes on without them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.certkit import self_signed
from tests.simefikit import SbKeys, build_image, need_efi_tools, rebuilt_uki, sb_keys

from bastion.build import disk, uki
from bastion.device.boot.efi_chain import EfiBootChain, EfiStage
from bastion.device.boot.modules import KERNEL_KEYS_FILE
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.base import ConsoleKind
from bastion.device.platform.sim import SimPlatform
from bastion.errors import VerificationError
from bastion.formats import cpio, modsig
from bastion.formats import eventlog as el
from bastion.formats.efivars import SignatureData, SignatureList, encode_signature_lists
from bastion.formats.pe import PeImage
from bastion.formats.uki import uki_sections
from bastion.trust import pcr7
from bastion.trust.image import predict_efi_pcrs

pytestmark = pytest.mark.integration

ENTRY = "EFI/Linux/bastion+3-0.efi"


@pytest.fixture(scope="module")
def keys() -> SbKeys:
    need_efi_tools()
    return sb_keys()


@pytest.fixture(scope="module")
def image(keys: SbKeys, tmp_path_factory: pytest.TempPathFactory) -> disk.VmImage:
    return build_image(tmp_path_factory.mktemp("efi-image"), keys)


def _with_hashes(keys: SbKeys, db_hashes: list[bytes], dbx_hashes: list[bytes]) -> dict[str, bytes]:
    variables = keys.variables()
    owner = keys.owner()
    db = variables["db"] + encode_signature_lists([SignatureList.sha256(owner, db_hashes)])  # type: ignore[arg-type]
    variables["db"] = db
    if dbx_hashes:
        variables["dbx"] = encode_signature_lists([SignatureList.sha256(owner, dbx_hashes)])  # type: ignore[arg-type]
    return variables


# --- db hashes -----------------------------------------------------------------------------


def test_unsigned_uki_whose_hash_is_in_db_and_dbx_is_refused(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    unsigned = rebuilt_uki(image.uki, signer=None)
    digest = PeImage.parse(unsigned).authenticode_digest("sha256")
    create_efi_device(tmp_path / "dev", image.path, _with_hashes(keys, [digest], [digest]))
    plat = SimPlatform(tmp_path / "dev")
    plat.esp().write(ENTRY, unsigned)
    with pytest.raises(VerificationError, match="listed in dbx") as err:
        EfiBootChain(plat).run()
    assert str(err.value).startswith("systemd-boot: Error loading")


def test_unsigned_uki_whose_hash_is_in_db_boots_and_pcr7_names_the_hash(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    unsigned = rebuilt_uki(image.uki, signer=None)
    digest = PeImage.parse(unsigned).authenticode_digest("sha256")
    variables = _with_hashes(keys, [bytes(32), digest], [])
    create_efi_device(tmp_path / "dev", image.path, variables)
    plat = SimPlatform(tmp_path / "dev")
    plat.esp().write(ENTRY, unsigned)
    report = EfiBootChain(plat).run()
    assert report.reached is EfiStage.RUNNING
    raw = plat.load("eventlog.bin")
    assert raw is not None
    authorities = [
        e for e in el.parse(raw).events if e.event_type == pcr7.EV_EFI_VARIABLE_AUTHORITY
    ]
    # systemd-boot by the db certificate, the UKI by its hash entry: two authorities
    hash_entry = SignatureData(keys.owner(), digest)  # type: ignore[arg-type]
    expected = pcr7.uefi_variable_data(
        "db", pcr7.EFI_IMAGE_SECURITY_DATABASE, hash_entry.to_bytes()
    )
    assert len(authorities) == 2 and authorities[1].data == expected
    replayed = el.replay(el.parse(raw).events)
    assert report.handoff_pcrs[7] == replayed[7].hex()
    # the offline prediction finds the same two authorities in db (image pcrs/golden)
    assert image.loader is not None
    predicted = predict_efi_pcrs(image.loader, unsigned, variables)
    assert predicted[7] == replayed[7]
    assert pcr7.state_for_images(variables, (image.loader, unsigned)).authorities[1] == hash_entry
    # and one admitted by its certificate has one authority: another PCR 7
    assert predict_efi_pcrs(image.loader, image.uki, variables)[7] != replayed[7]


# --- kernel modules --------------------------------------------------------------------------


def _signed(body: bytes, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bytes:
    return modsig.sign_module(
        body, cert, lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    )


def _module_uki(signed_uki: bytes, keys: SbKeys, initrd: bytes, extra_cmdline: str) -> bytes:
    sections = uki_sections(signed_uki)
    cmdline = sections[".cmdline"].rstrip(b"\0").decode() + " " + extra_cmdline
    inputs = uki.UkiInputs(
        linux=sections[".linux"],
        osrel=sections[".osrel"],
        cmdline=cmdline.encode() + b"\0",
        initrd=initrd,
        pcrpkey=sections.get(".pcrpkey"),
    )
    inputs = uki.with_pcr_signature(dataclasses.replace(inputs, pcrsig=None), keys.pcr)
    return keys.db.sign(uki.build_uki(disk.DEFAULT_STUB.read_bytes(), inputs))


@pytest.mark.parametrize("trusted", [True, False])
def test_modules_under_enforcement_on_a_sim_boot(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys, trusted: bool
) -> None:
    product, rogue = rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)
    product_cert, rogue_cert = self_signed(product, "product modules"), self_signed(rogue, "rogue")
    body = b"\x7fELF module " * 100
    mods = "lib/modules/6.1.0/kernel"
    initrd = cpio.archive([
        cpio.CpioEntry.file("etc/modules-load.d/bastion.conf", b"dm-verity\nunsigned\nrogue\n"),
        cpio.CpioEntry.file(f"{mods}/dm_verity.ko", _signed(body, product, product_cert)),
        cpio.CpioEntry.file(f"{mods}/unsigned.ko", body),
        cpio.CpioEntry.file(f"{mods}/rogue.ko", _signed(body, rogue, rogue_cert)),
    ])  # fmt: skip
    create_efi_device(
        tmp_path / "dev",
        image.path,
        keys.variables(),
        kernel_keys=[product_cert] if trusted else [],
    )
    plat = SimPlatform(tmp_path / "dev")
    assert (plat.load(KERNEL_KEYS_FILE) is not None) is trusted
    plat.esp().write(ENTRY, _module_uki(image.uki, keys, initrd, "module.sig_enforce=1"))
    report = EfiBootChain(plat).run()
    assert report.reached is EfiStage.RUNNING  # a refused module does not stop the boot
    assert report.modules["enforce"] is True
    refused = {m["name"]: m["reason"] for m in report.modules["refused"]}
    assert "Loading of unsigned module is rejected" in refused["unsigned"]
    assert "module with unavailable key is rejected" in refused["rogue"]
    if trusted:
        assert [m["name"] for m in report.modules["loaded"]] == ["dm-verity"]
    else:  # no trusted keys: the product's own module is refused too
        assert report.modules["loaded"] == [] and "unavailable key" in refused["dm-verity"]
    warnings = [m for k, m in plat.console_lines if k is ConsoleKind.WARNING]
    assert any("unsigned module is rejected" in w for w in warnings)


def test_a_zstd_initrd_with_xz_modules_on_a_sim_boot(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    """The chain as Debian ships it: a zstd initrd, modules as ``.ko.xz`` (ADR 0039,
    amendment 2026-12-07); a signed one loads, a tampered one is refused."""
    import lzma

    import zstandard

    product = rsa.generate_private_key(65537, 2048)
    product_cert = self_signed(product, "product modules")
    good = _signed(b"\x7fELF module " * 100, product, product_cert)
    tampered = bytearray(good)
    tampered[3] ^= 1
    mods = "usr/lib/modules/6.1.0/kernel"
    initrd = zstandard.ZstdCompressor().compress(cpio.archive([
        cpio.CpioEntry.file("etc/modules-load.d/bastion.conf", b"dm-verity\ntampered\n"),
        cpio.CpioEntry.file(f"{mods}/dm_verity.ko.xz", lzma.compress(good)),
        cpio.CpioEntry.file(f"{mods}/tampered.ko.xz", lzma.compress(bytes(tampered))),
    ]))  # fmt: skip
    create_efi_device(tmp_path / "dev", image.path, keys.variables(), kernel_keys=[product_cert])
    plat = SimPlatform(tmp_path / "dev")
    plat.esp().write(ENTRY, _module_uki(image.uki, keys, initrd, "module.sig_enforce=1"))
    report = EfiBootChain(plat).run()
    assert report.reached is EfiStage.RUNNING
    assert "unreadable" not in report.modules, report.modules
    assert [m["name"] for m in report.modules["loaded"]] == ["dm-verity"]
    assert [m["name"] for m in report.modules["refused"]] == ["tampered"]


def test_without_enforcement_unsigned_modules_taint(
    tmp_path: Path, image: disk.VmImage, keys: SbKeys
) -> None:
    initrd = cpio.archive([
        cpio.CpioEntry.file("etc/modules-load.d/x.conf", b"unsigned\n"),
        cpio.CpioEntry.file("lib/modules/6.1.0/unsigned.ko", b"\x7fELF"),
    ])  # fmt: skip
    create_efi_device(tmp_path / "dev", image.path, keys.variables())
    plat = SimPlatform(tmp_path / "dev")
    plat.esp().write(ENTRY, _module_uki(image.uki, keys, initrd, ""))
    report = EfiBootChain(plat).run()
    assert report.modules["loaded"][0]["taint"] and report.modules["enforce"] is False
    assert any("tainting kernel" in w for w in report.warnings)
