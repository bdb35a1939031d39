"""The sim initrd's data volume: LUKS2 unlocked by a ``systemd-tpm2`` token whose secret
is sealed to a **signed** PCR 11 policy (the UKI's ``.pcrpkey``/``.pcrsig``).

What systemd-cryptsetup does in a real initrd with a token made by
``systemd-cryptenroll --tpm2-public-key=... --tpm2-public-key-pcrs=11``: the stub put
``.pcrsig`` in ``/.extra``; the token's PolicyAuthorize accepts any PCR 11 value the
product's PCR key signed, so an update never reseals and an unsigned image never
unlocks (storage/sealed.py, storage/signed_policy.py).

First boot (the partition holds no LUKS2 header and the device never had one): format
the volume with a fresh volume key, keyslot 0 for a new recovery key (returned once),
and enrol the token against the booted UKI's ``.pcrpkey``, proving the unseal works with
its ``.pcrsig`` before the keyslot is kept. A provisioned device whose header is gone is
tampered with and refused, never re-formatted.
"""

from __future__ import annotations

from collections.abc import Mapping

from bastion.device.platform.base import Platform
from bastion.errors import FormatError, NotFoundError, PolicyError, SignatureError, TamperError
from bastion.formats.luks2 import Token
from bastion.storage import recovery, sealed
from bastion.storage.luks2_volume import MINIMAL_KDF, Luks2Volume
from bastion.tpm.base import Tpm

LUKS_MAGICS = (b"LUKS\xba\xbe", b"SKUL\xba\xbe")
#: where a LUKS2 header may start (the primary, then the secondary's possible offsets)
HEADER_OFFSETS = (0, 16384, 32768, 65536)
STATE_FLAG = "data_volume"


def has_header(plat: Platform, part: str) -> bool:
    """True when partition ``part`` starts a LUKS2 header copy where one may be."""
    head = plat.read_partition(part, HEADER_OFFSETS[-1] + len(LUKS_MAGICS[0]))
    size = len(LUKS_MAGICS[0])
    return any(head[o : o + size] in LUKS_MAGICS for o in HEADER_OFFSETS)


def open_signed(
    plat: Platform,
    tpm: Tpm,
    part: str,
    sections: Mapping[str, bytes],
    *,
    warnings: list[str] | None = None,
) -> tuple[bool, str | None]:
    """Unlock (or, on first boot, create) the data volume; (first boot?, recovery key).

    A damaged or stale LUKS2 header copy is rewritten from the good one once the volume
    unlocked (as cryptsetup does on open), reported as one line appended to ``warnings``.
    """
    pcrsig = sections.get(".pcrsig")
    pcrpkey = sections.get(".pcrpkey")
    if not pcrsig or not pcrpkey:
        raise SignatureError(
            "the UKI carries no .pcrsig/.pcrpkey: the data volume's signed policy cannot be "
            "satisfied"
        )
    provisioned = bool(plat.state().get(STATE_FLAG))
    if not has_header(plat, part):
        if provisioned:
            raise TamperError(f"data volume header is gone on a provisioned device ({part})")
        return True, _first_boot(plat, tpm, part, pcrpkey, pcrsig)
    storage = plat.partition_storage(part)
    try:
        volume = Luks2Volume.open(storage)
        try:
            sealed.unlock_with_token(volume, tpm, pcr_signature=pcrsig)
        except NotFoundError as exc:
            raise TamperError(f"data volume has no TPM token: {exc}") from exc
        except PolicyError as exc:
            raise PolicyError(f"data key not released: {exc}") from exc
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
        plat.set_state(**{STATE_FLAG: True})
    return False, None


def _first_boot(plat: Platform, tpm: Tpm, part: str, pcrpkey: bytes, pcrsig: bytes) -> str:
    key = recovery.generate_recovery_key()
    storage = plat.partition_storage(part)
    try:
        volume = Luks2Volume.format(storage, key.encode("ascii"), kdf=MINIMAL_KDF, label="data")
        volume.add_token(Token(recovery.TOKEN_TYPE, (0,), {}))
        sealed.enroll_tpm_signed(volume, tpm, pcrpkey, pcrs=(), pcr_signature=pcrsig)
        volume.sync()
        volume.lock()
    finally:
        storage.close()
    plat.set_state(**{STATE_FLAG: True})
    return key


WIPE_BYTES = 16 * 1024 * 1024  # both LUKS2 headers and the keyslot area of the default layout


def wipe(plat: Platform, part_name: str) -> None:
    """Crypto-erase the data volume: overwrite both LUKS2 headers and the keyslot area."""
    try:
        part = plat.disk_layout().find(part_name)
    except FormatError:
        return
    plat.write_partition(part_name, 0, bytes(min(WIPE_BYTES, part.size)))
