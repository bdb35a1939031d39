"""Create a sim device: verify the whole-image signature, then lay out the device folder.

``create_efi_device`` refuses an image whose ``disk.img.sig`` does not verify with the
image key (EMT and the issue: a signature over the whole raw image is checked before a
device is provisioned), copies the image as the device's disk (keeping it sparse),
enrols the Secure Boot variables, burns the platform root key hash into a fresh fuse
bank, writes the security profile, and records which TPM the device uses.

The profile is signed by the platform root key itself, or (so the offline root is never
needed to create a device) by the key the root delegated profile signing to at
``keys init``; the delegation is then stored beside the profile for the ROM to check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bastion.device.platform.sim import SimPlatform, create_sim_folder
from bastion.device.profile import DELEGATION_FILE, PAYLOAD_TYPE, SecurityProfile, device_id
from bastion.errors import ConfigError
from bastion.storage.disk_image import DiskImage
from bastion.trust import delegation
from bastion.trust.envelope import sign_envelope
from bastion.trust.image import ImageTrust, verify_image_signature
from bastion.trust.signer import Signer, Verifier

if TYPE_CHECKING:
    from bastion.device.update.slots import SlotRecord

TPM_KINDS = ("software", "swtpm")


def _sparse_copy(src: Path, dest: Path) -> None:
    chunk = 4 * 1024 * 1024
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fout.truncate(size)
        pos = 0
        for block in iter(lambda: fin.read(chunk), b""):
            if block.count(0) != len(block):
                os.pwrite(fout.fileno(), block, pos)
            pos += len(block)
        os.fsync(fout.fileno())


def check_profile_signer(signer: Signer, root: Verifier, profile_delegation: bytes | None) -> None:
    """Refuse a profile signer the device's ROM would not accept."""
    if profile_delegation is None:
        if signer.key_id != root.key_id:
            raise ConfigError("the profile signer is not the trusted platform root key")
        return
    delegate = delegation.verify_delegation(
        profile_delegation, root, delegation.ROLE_PROFILE, what="profile delegation"
    )
    if delegate.key_id != signer.key_id:
        raise ConfigError(
            f"profile delegation names key {delegate.key_id[:16]}..., the profile signer "
            f"is {signer.key_id[:16]}..."
        )


def sign_profile(
    folder: Path,
    profile: SecurityProfile,
    platform_root: Signer,
    *,
    trust: Verifier | None = None,
    profile_delegation: bytes | None = None,
) -> None:
    """Replace a device's security profile (signed by the platform root key, or by the
    key ``profile_delegation`` names, checked against the platform root ``trust``).

    A profile not yet bound to a device (``device == ""``) is bound to this device's EK
    here; give it a higher ``serial`` than the one it replaces, or the ROM refuses it.
    """
    if profile_delegation is not None:
        if trust is None:
            raise ConfigError("a profile delegation is checked against the platform root key")
        check_profile_signer(platform_root, trust, profile_delegation)
    plat = SimPlatform(folder)
    _ = plat.config  # must be a device
    if not profile.device:
        with plat.power_on() as dev_tpm:
            profile = dataclasses.replace(profile, device=device_id(dev_tpm.ek_public()))
    if profile_delegation is not None:
        plat.store(DELEGATION_FILE, profile_delegation)
    plat.store(
        "profile.json", sign_envelope(PAYLOAD_TYPE, profile.to_bytes(), [platform_root]).to_bytes()
    )


#: efivarfs attributes of an enrolled Secure Boot variable: NV, BS, RT, time-based auth
SECURE_BOOT_ATTRIBUTES = (0x27).to_bytes(4, "little")


def create_efi_device(
    folder: Path,
    image: Path,
    secure_boot: dict[str, bytes],
    *,
    tpm: str = "software",
    fuses: str = "file",
    trust: ImageTrust | None = None,
    profile_signer: Signer | None = None,
    profile: SecurityProfile | None = None,
    profile_delegation: bytes | None = None,
    kernel_keys: Sequence[x509.Certificate] = (),
) -> SimPlatform:
    """A sim device that boots ``image`` (an ESP + UKI disk) with its firmware's Secure
    Boot variables ``secure_boot`` (``PK``/``KEK``/``db``/``dbx`` signature-list bytes;
    a PK puts the firmware in user mode, Secure Boot on). With ``trust`` the image's
    ``disk.img.sig`` must verify first (refused before anything is written), and with
    ``profile_signer`` (the platform root key, or the key ``profile_delegation`` names)
    the platform root key hash is burned into the fuses, the root's public key stored
    (``platform-key.pem``) and the signed security profile written, which the EFI chain
    then enforces (device/boot/policy.py). ``kernel_keys`` are the sim kernel's built-in
    trusted keys for module signatures (``kernel-keys.pem``, device/boot/modules.py;
    none: every signed module's key is unavailable)."""
    from bastion.device.boot.firmware import efivar_name
    from bastion.device.boot.modules import KERNEL_KEYS_FILE

    unknown = set(secure_boot) - {"PK", "KEK", "db", "dbx"}
    if unknown:
        raise ConfigError(f"Secure Boot variables {sorted(unknown)}: expected PK, KEK, db, dbx")
    if tpm not in TPM_KINDS and not tpm.startswith(("swtpm:", "software:")):
        raise ConfigError(f"--tpm {tpm!r}: expected software, swtpm or a TPM URI")
    if trust is not None:
        verify_image_signature(DiskImage(image), trust)
    if profile_signer is not None:
        if trust is None:
            raise ConfigError("a security profile needs the image trust (the platform root key)")
        check_profile_signer(profile_signer, trust.platform_root, profile_delegation)
    plat = create_sim_folder(folder, tpm, fuses)
    _sparse_copy(image, plat.disk)
    record = factory_record(plat)
    if record is not None:
        from bastion.device.update import slots

        slots.save_record(plat, record)
    for name, data in sorted(secure_boot.items()):
        if data:
            plat.set_efi_variable(efivar_name(name), SECURE_BOOT_ATTRIBUTES + data)
    if kernel_keys:
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kernel_keys)
        plat.store(KERNEL_KEYS_FILE, pem)
    if profile_signer is not None and trust is not None:
        from bastion.device.boot.policy import PLATFORM_KEY_FILE
        from bastion.trust.keys import public_key_to_pem

        with plat.power_on() as dev_tpm:
            bank = plat.fuses(dev_tpm) if fuses == "tpm" else plat.fuses()
            bank.burn_key_hash(trust.platform_root_hash)
            ek = dev_tpm.ek_public()
        prof = dataclasses.replace(profile or SecurityProfile(), device=device_id(ek))
        plat.store(PLATFORM_KEY_FILE, public_key_to_pem(trust.platform_root.public_key))
        if profile_delegation is not None:
            plat.store(DELEGATION_FILE, profile_delegation)
        plat.store(
            "profile.json",
            sign_envelope(PAYLOAD_TYPE, prof.to_bytes(), [profile_signer]).to_bytes(),
        )
    return plat


def factory_record(plat: SimPlatform) -> SlotRecord | None:
    """The ``update-slots.json`` record of the slot a factory disk ships (ADR 0030): the
    ``bastion-GEN-a`` entry's version and security version (its ``.osrel``), its UKI
    digest, and the digest and size of the root the verity superblock covers. None for a
    disk without such an entry (a one-slot VM disk is not an A/B product)."""
    from bastion.device.boot.loader import parse_osrel
    from bastion.device.boot.stub import security_version
    from bastion.device.update import slots
    from bastion.formats.uki import uki_sections
    from bastion.formats.verity import VeritySuperblock

    esp = plat.esp()
    found = slots.entries_of(esp, "a")
    if not found:
        return None
    entry = max(found, key=lambda e: e.generation)
    uki = esp.read(entry.path)
    osrel = parse_osrel(uki_sections(uki).get(".osrel", b""))
    params = VeritySuperblock.parse(plat.read_partition(slots.verity_partition("a"), 512)).params
    size = params.data_blocks * params.data_block_size
    root = plat.partition_storage(slots.root_partition("a"))
    try:
        digest = hashlib.sha256()
        for offset in range(0, size, 1 << 20):
            digest.update(root.read(offset, min(1 << 20, size - offset)))
    finally:
        root.close()
    return slots.SlotRecord(
        slot="a",
        version=osrel.get("VERSION_ID", ""),
        svn=security_version(osrel),
        bundle="",  # the factory image came from no bundle
        uki_sha256=hashlib.sha256(uki).hexdigest(),
        rootfs_sha256=digest.hexdigest(),
        rootfs_size=size,
        generation=entry.generation,
        # the factory slot has nothing to fall back to: it is the committed baseline (its
        # first boot blesses the entry and raises the fuses to its security version)
        state=slots.SlotState.COMMITTED,
    )
