"""Create a sim device: verify the whole-image signature, then lay out the device folder.

``create_device`` refuses an image whose ``disk.img.sig`` does not verify with the image
key (EMT and the issue: a signature over the whole raw image is checked before a device
is provisioned), copies the image as the device's disk (keeping it sparse), burns the
platform root key hash into a fresh fuse bank, writes the security profile, and records
which TPM the device uses.

The profile is signed by the platform root key itself, or (so the offline root is never
needed to create a device) by the key the root delegated profile signing to at
``keys init``; the delegation is then stored beside the profile for the ROM to check.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from bastion.device.platform.sim import SimPlatform, create_sim_folder
from bastion.device.profile import DELEGATION_FILE, PAYLOAD_TYPE, SecurityProfile, device_id
from bastion.errors import ConfigError
from bastion.storage.disk_image import DiskImage
from bastion.trust import delegation
from bastion.trust.envelope import sign_envelope
from bastion.trust.image import ImageTrust, verify_image_signature
from bastion.trust.signer import Signer, Verifier

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


def create_device(
    folder: Path,
    image: Path,
    trust: ImageTrust,
    platform_root: Signer,
    *,
    tpm: str = "software",
    fuses: str = "file",
    profile: SecurityProfile | None = None,
    profile_delegation: bytes | None = None,
) -> dict[str, Any]:
    """Create the device folder; returns a summary (verified image metadata included).

    ``platform_root`` signs the profile: the platform root key, or the key that
    ``profile_delegation`` (signed by the platform root) names.
    """
    check_profile_signer(platform_root, trust.platform_root, profile_delegation)
    if tpm not in TPM_KINDS and not tpm.startswith(("swtpm:", "software:")):
        raise ConfigError(f"--tpm {tpm!r}: expected software, swtpm or a TPM URI")
    metadata = verify_image_signature(DiskImage(image), trust)
    plat = create_sim_folder(folder, tpm, fuses)
    _sparse_copy(image, plat.disk)
    with plat.power_on() as dev_tpm:
        if fuses == "tpm":
            plat.fuses(dev_tpm).burn_key_hash(trust.platform_root_hash)
        else:
            plat.fuses().burn_key_hash(trust.platform_root_hash)
        ek = dev_tpm.ek_public()
    prof = dataclasses.replace(profile or SecurityProfile(), device=device_id(ek))
    envelope = sign_envelope(PAYLOAD_TYPE, prof.to_bytes(), [platform_root])
    if profile_delegation is not None:
        plat.store(DELEGATION_FILE, profile_delegation)
    plat.store("profile.json", envelope.to_bytes())
    return {
        "device": str(folder),
        "image": metadata,
        "tpm": tpm,
        "fuses": fuses,
        "platform_key_hash": trust.platform_root_hash.hex(),
        "profile": prof.to_json(),
    }


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
