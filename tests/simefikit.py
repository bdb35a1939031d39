"""Shared helpers for sim boots of real (ESP + UKI + verity) disks: keys, images, devices.

Everything is real: systemd's stub and systemd-boot from systemd-boot-efi, Authenticode
signatures, an erofs root with dm-verity, a FAT ESP written with mtools. The kernel in
``.linux`` is placeholder bytes (the sim does not execute it; QEMU tests use a real one).
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.bootkit import _cert
from tests.conftest import need_tool

from bastion.build import disk, uki
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.formats.efivars import SignatureList, encode_signature_lists
from bastion.formats.uki import uki_sections
from bastion.trust import secureboot
from bastion.trust.signer import SignatureScheme, SoftwareSigner

KERNEL = b"MZ not really a kernel, the sim never runs it " * 64
INITRD = b"070701 a placeholder initrd " * 64


@dataclass(frozen=True)
class SbKeys:
    """A Secure Boot key set: PK, KEK, db (as signers and certificates)."""

    db: disk.SecureBootSigner
    pk: x509.Certificate
    kek: x509.Certificate
    pcr: SoftwareSigner

    def variables(self, dbx: bytes = b"") -> dict[str, bytes]:
        owner = secureboot.owner_guid(self.pk)
        out = {
            name: encode_signature_lists([secureboot.certificate_list(owner, cert)])
            for name, cert in (("PK", self.pk), ("KEK", self.kek), ("db", self.db.certificate))
        }
        if dbx:
            out["dbx"] = dbx
        return out

    def owner(self) -> object:
        return secureboot.owner_guid(self.pk)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def sb_keys(variant: int = 0) -> SbKeys:
    db = _rsa()
    return SbKeys(
        disk.SecureBootSigner(
            SoftwareSigner(db, SignatureScheme.RSA_PKCS1V15_SHA256), _cert(db, f"db {variant}")
        ),
        _cert(_rsa(), f"PK {variant}"),
        _cert(_rsa(), f"KEK {variant}"),
        SoftwareSigner(_rsa(), SignatureScheme.RSA_PKCS1V15_SHA256),
    )


def need_efi_tools() -> None:
    for tool in ("mkfs.vfat", "mcopy", "mdir", "mren", "mdel", "mmd", "mkfs.erofs"):
        need_tool(tool)
    for path in (disk.DEFAULT_STUB, disk.DEFAULT_LOADER):
        if not path.is_file():
            need_tool(str(path), "systemd-boot-efi")


def make_root(folder: Path) -> Path:
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / "hello.txt").write_text("hello from the verity root\n")
    (folder / "usr").mkdir()
    (folder / "usr" / "blob").write_bytes(bytes(i * 7 % 251 for i in range(64 * 1024)))
    return folder


OSREL = b'NAME="bastion"\nID=bastion\nVERSION_ID=2\nBASTION_SECURITY_VERSION=1\n'


def build_image(folder: Path, keys: SbKeys, *, data: bool = True) -> disk.VmImage:
    """A signed disk: ESP (signed systemd-boot, ``bastion+3-0.efi``), root, verity, data."""
    folder.mkdir(parents=True, exist_ok=True)
    data_path = None
    if data:
        data_path = folder / "data.img"
        with open(data_path, "wb") as handle:
            handle.truncate(20 * 1024 * 1024)
    spec = disk.VmImageSpec(
        kernel=KERNEL,
        initrd=INITRD,
        root_dir=make_root(folder / "root"),
        osrel=OSREL,
        pcr_signer=keys.pcr,
        data_volume=data_path,
    )
    return disk.build_vm_image(spec, folder / "disk.img", secure_boot=keys.db)


def new_device(folder: Path, image: Path, keys: SbKeys, *, dbx: bytes = b"") -> SimPlatform:
    return create_efi_device(folder, image, keys.variables(dbx))


def rebuilt_uki(
    signed: bytes,
    *,
    osrel: bytes | None = None,
    signer: disk.SecureBootSigner | None = None,
    pcr: SoftwareSigner | None = None,
) -> bytes:
    """The UKI ``signed`` rebuilt from its sections (another ``.osrel``), signed by
    ``signer`` (None: unsigned); with ``pcr`` its ``.pcrsig`` is signed anew."""
    sections = uki_sections(signed)
    inputs = uki.UkiInputs(
        linux=sections[".linux"],
        osrel=osrel if osrel is not None else sections[".osrel"],
        cmdline=sections[".cmdline"],
        initrd=sections.get(".initrd"),
        pcrpkey=sections.get(".pcrpkey"),
        pcrsig=sections.get(".pcrsig"),
    )
    if pcr is not None:
        inputs = uki.with_pcr_signature(replace(inputs, pcrsig=None), pcr)
    out = uki.build_uki(disk.DEFAULT_STUB.read_bytes(), inputs)
    return signer.sign(out) if signer is not None else out


def dbx_hash(owner: object, digest: bytes) -> bytes:
    return encode_signature_lists([SignatureList.sha256(owner, [digest])])  # type: ignore[arg-type]


def copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest)


def build_product(folder: Path, keys: SbKeys, image_signer: object) -> Path:
    """``image build``'s EFI disk (placeholder kernel) signed with ``image_signer``."""
    from bastion.build.efi_image import EfiImageKeys, build_efi_image
    from bastion.build.fs import FsType
    from bastion.build.image import ImageSpec

    folder.mkdir(parents=True, exist_ok=True)
    spec = ImageSpec(
        rootfs=make_root(folder / "root"),
        kernel=KERNEL,
        initrd=INITRD,
        version="2",
        security_version=1,
        fs=FsType.EROFS,
        data_size=24 * 1024 * 1024,
    )
    efi_keys = EfiImageKeys(image=image_signer, secure_boot=keys.db, pcr=keys.pcr)  # type: ignore[arg-type]
    return build_efi_image(spec, efi_keys, folder / "disk.img").path
