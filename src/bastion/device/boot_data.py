"""The initrd's data-volume step: create + seal on first boot, unseal + unlock later.

First boot (the data partition holds no LUKS2 header and the device was never
provisioned): format a LUKS2 volume on the partition with a fresh random volume key,
keyslot 0 opened by a new systemd-style recovery key (returned once, never stored), and a
``systemd-tpm2`` token whose secret is sealed to the boot-chain PCRs as they are right
now (trust/measure.py SEAL_PCRS, before the lock event). Later boots: unseal through
the token and unlock; a PCR mismatch means the data key is not released. The lock
itself (extending PCR 15) is the chain's job, logged in the event log.

Refusals fail closed: a device that was provisioned but whose data partition no longer
has a LUKS2 header is tampered with, never silently re-formatted.
"""

from __future__ import annotations

from bastion.device.platform.base import Platform
from bastion.device.profile import SecurityProfile
from bastion.errors import FormatError, NotFoundError, PolicyError, TamperError
from bastion.formats.image import PART_DATA
from bastion.formats.luks2 import Token
from bastion.storage import recovery, sealed
from bastion.storage.luks2_volume import MINIMAL_KDF, Luks2Volume
from bastion.tpm.base import PcrSelection, Tpm

LUKS_MAGICS = (b"LUKS\xba\xbe", b"SKUL\xba\xbe")
MARKER = b"bastion data volume v1\n"
WIPE_BYTES = 16 * 1024 * 1024  # both headers and the keyslot area of the default layout
#: where a LUKS2 header may start (the primary, then the secondary's possible offsets)
HEADER_OFFSETS = (0, 16384, 32768, 65536)


def _has_header(plat: Platform) -> bool:
    head = plat.read_partition(PART_DATA, HEADER_OFFSETS[-1] + len(LUKS_MAGICS[0]))
    return any(
        head[offset : offset + len(LUKS_MAGICS[0])] in LUKS_MAGICS for offset in HEADER_OFFSETS
    )


def open_data_volume(
    plat: Platform,
    tpm: Tpm,
    profile: SecurityProfile,
    selection: PcrSelection,
    *,
    warnings: list[str] | None = None,
) -> tuple[bool, str | None]:
    """(first boot?, recovery key on first boot) after the volume is unlocked.

    A damaged or stale LUKS2 header copy is rewritten from the good one once the volume
    unlocked, and reported as one line appended to ``warnings``.
    """
    provisioned = bool(plat.state().get("data_volume"))
    if not _has_header(plat):
        if provisioned:
            raise TamperError("data volume header is gone on a provisioned device")
        return True, _first_boot(plat, tpm, selection)
    storage = plat.partition_storage(PART_DATA)
    try:
        volume = Luks2Volume.open(storage)
        try:
            sealed.unlock_with_token(volume, tpm)
        except PolicyError as exc:
            raise PolicyError(
                f"data key not released: the PCRs differ from the sealed policy ({exc})"
            ) from exc
        except NotFoundError as exc:
            raise TamperError(f"data volume has no TPM token: {exc}") from exc
        if volume.read(0, len(MARKER)) != MARKER:
            raise TamperError("data volume content does not start with bastion's marker")
        stale = volume.stale_copy
        if stale is not None:
            volume.repair()
            if warnings is not None:
                warnings.append(
                    f"data volume: LUKS2 {stale.value} header copy was damaged or stale "
                    f"({volume.header_status}); rewritten from the other copy"
                )
        volume.lock()
    finally:
        storage.close()
    if not provisioned:
        plat.set_state(data_volume=True)
    return False, None


def _first_boot(plat: Platform, tpm: Tpm, selection: PcrSelection) -> str:
    key = recovery.generate_recovery_key()
    storage = plat.partition_storage(PART_DATA)
    try:
        volume = Luks2Volume.format(storage, key.encode("ascii"), kdf=MINIMAL_KDF, label="data")
        volume.add_token(Token(recovery.TOKEN_TYPE, (0,), {}))
        sealed.enroll_tpm(volume, tpm, pcrs=selection.indexes, bank=selection.bank)
        volume.write(0, MARKER)
        volume.sync()
        volume.lock()
    finally:
        storage.close()
    plat.set_state(data_volume=True)
    return key


def wipe(plat: Platform) -> None:
    """Crypto-erase the data volume: overwrite both LUKS2 headers and the keyslot area."""
    try:
        part = plat.disk_layout().find(PART_DATA)
    except FormatError:
        return
    plat.write_partition(PART_DATA, 0, bytes(min(WIPE_BYTES, part.size)))
