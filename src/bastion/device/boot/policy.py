"""The signed security profile at boot on the EFI chain: load it, check it, apply it.

The profile (device/profile.py) is signed by the platform root key or by the key the
root delegated profile signing to; the root's public key is stored on the device
(``platform-key.pem``, written at ``device create``) and must hash to the value burned
into the fuses, exactly as the container chain checked the key its boot archive carried.
The profile must name this device's TPM (EK) and have a serial no older than the highest
one accepted (a thermometer code in a TPM NV bits index, bits only ever set).

A device without a stored platform key has no profile: it halts on any refusal (the
firmware's behaviour). With one, :func:`response` says what a refusal does:

* ``halt``: the power-on stops (the default);
* ``try-other-slot``: the booted entry is marked bad as ``systemd-bless-boot bad`` does
  (``NAME+0-DONE``) and the device reboots once: systemd-boot then puts it last;
* ``wipe-data``: the data volume's headers are overwritten and the device must be
  re-provisioned.

``rollback`` and ``verity`` may be set to audit (log and continue); Secure Boot itself is
the firmware's and never audited.
"""

from __future__ import annotations

import hmac

from bastion.device.platform.base import Platform
from bastion.device.profile import DELEGATION_FILE, PAYLOAD_TYPE, SecurityProfile, device_id
from bastion.device.profile import parse_profile as parse_profile_payload
from bastion.errors import FormatError, NotFoundError, RollbackError, VerificationError
from bastion.tpm.base import Tpm
from bastion.trust import delegation
from bastion.trust.envelope import parse_envelope, verify_envelope
from bastion.trust.image import platform_key_hash
from bastion.trust.keys import load_public_key
from bastion.trust.signer import Verifier

PLATFORM_KEY_FILE = "platform-key.pem"
PROFILE_FILE = "profile.json"
#: TPM NV bits index holding the highest accepted security-profile serial (as the old chain)
PROFILE_SERIAL_NV = 0x013BA510


def load_profile(plat: Platform, tpm: Tpm, fused_key_hash: bytes | None) -> SecurityProfile | None:
    """The device's verified profile, or None when the device has none (no platform key
    stored). Raises VerificationError / RollbackError naming what did not match."""
    pem = plat.load(PLATFORM_KEY_FILE)
    if pem is None:
        return None
    if fused_key_hash is None:
        raise VerificationError("a platform key is stored but no key hash is burned into the fuses")
    try:
        actual = platform_key_hash(pem)
    except FormatError as exc:
        raise VerificationError(f"stored platform key unreadable: {exc}") from exc
    if not hmac.compare_digest(actual, fused_key_hash):
        raise VerificationError(
            f"stored platform key hash {actual.hex()[:16]}... differs from the fused "
            f"{fused_key_hash.hex()[:16]}..."
        )
    root = Verifier.of(load_public_key(pem))
    raw = plat.load(PROFILE_FILE)
    if raw is None:
        raise VerificationError("no signed security profile on the device")
    trusted = [root]
    try:
        granted = plat.load(DELEGATION_FILE)
        if granted is not None:  # a present but bad delegation refuses the boot
            trusted.append(
                delegation.verify_delegation(
                    granted, root, delegation.ROLE_PROFILE, what="profile delegation"
                )
            )
        profile = parse_profile_payload(
            verify_envelope(parse_envelope(raw), trusted, payload_type=PAYLOAD_TYPE)
        )
    except (VerificationError, FormatError) as exc:
        raise VerificationError(f"security profile refused: {exc}") from exc
    mine = device_id(tpm.ek_public())
    if not hmac.compare_digest(profile.device, mine):
        raise VerificationError(
            f"security profile refused: it is for device {profile.device[:16]}..., this "
            f"device is {mine[:16]}..."
        )
    try:
        bits = tpm.nv_read_bits(PROFILE_SERIAL_NV)
    except NotFoundError:
        tpm.nv_define_bits(PROFILE_SERIAL_NV)
        bits = tpm.nv_read_bits(PROFILE_SERIAL_NV)
    accepted = (bits + 1).bit_length() - 1  # the run of ones from bit 0
    if profile.serial < accepted:
        raise RollbackError(
            f"security profile serial {profile.serial} is older than the accepted {accepted}"
        )
    if profile.serial > accepted:
        tpm.nv_set_bits(PROFILE_SERIAL_NV, (1 << profile.serial) - 1)
    return profile
