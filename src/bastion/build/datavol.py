"""The VM's data volume: LUKS2, unlocked in the guest by a TPM token with a signed PCR 11 policy.

:func:`build_data_volume` makes, on the host and without device-mapper:

1. a LUKS2 image (:class:`bastion.storage.luks2_volume.Luks2Volume`, aes-xts, 4 KiB
   sectors) with keyslot 0 for a recovery passphrase;
2. a ``systemd-tpm2`` token (:func:`bastion.storage.sealed.enroll_tpm_signed`) sealed on
   the swtpm whose state folder the VM boots with: PolicyAuthorize by the PCR signing
   key over PCR 11 (what the UKI's ``.pcrpkey`` holds), no literal PCRs by default. The
   guest's systemd token plugin unseals it when ``/run/systemd/tpm2-pcr-signature.json``
   (the UKI's ``.pcrsig``) signs the PCR 11 value the boot reached (the stub's sections
   and the ``enter-initrd`` phase).

The TPM is a swtpm on that state folder, started and stopped here by PID; the folder is
made by :func:`bastion.io.qemu.setup_tpm_state` (sha256 bank only) when new, so the same
folder handed to :func:`bastion.io.qemu.boot` is the TPM the secret is sealed to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import ConfigError
from bastion.io.qemu import setup_tpm_state
from bastion.io.runner import CommandRunner
from bastion.storage.luks2_io import FileRange
from bastion.storage.luks2_volume import MINIMAL_KDF, Luks2Volume
from bastion.storage.sealed import SIGNED_PCRS, TpmEnrollment, enroll_tpm_signed

MiB = 1024 * 1024
DEFAULT_DATA_SIZE = 32 * MiB
MIN_DATA_SIZE = 20 * MiB  # the 16 MiB LUKS2 header area plus some data
DATA_LABEL = "bastion-data"


@dataclass(frozen=True, slots=True)
class DataVolume:
    """What :func:`build_data_volume` wrote."""

    path: Path
    uuid: str
    enrollment: TpmEnrollment
    tpm_state: Path


def format_data_volume(out: Path, recovery: bytes, *, size: int = DEFAULT_DATA_SIZE) -> str:
    """Write a LUKS2 image of ``size`` bytes at ``out`` (keyslot 0: ``recovery``); its UUID."""
    if size < MIN_DATA_SIZE or size % MiB:
        raise ConfigError(f"data volume size {size}: a whole number of MiB, at least 20 MiB")
    if not recovery:
        raise ConfigError("the data volume needs a recovery passphrase")
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    with FileRange(out) as storage:
        volume = Luks2Volume.format(storage, recovery, kdf=MINIMAL_KDF, label=DATA_LABEL)
        uuid = volume.uuid
    return uuid


def build_data_volume(
    out: Path,
    tpm_state: Path,
    pcr_public_key_pem: bytes,
    recovery: bytes,
    *,
    size: int = DEFAULT_DATA_SIZE,
    runner: CommandRunner | None = None,
) -> DataVolume:
    """A LUKS2 image with a signed-PCR-11 TPM token sealed on the TPM in ``tpm_state``."""
    from bastion.tpm.swtpm import Swtpm
    from bastion.tpm.tss import TssTpm

    runner = runner or CommandRunner()
    state = setup_tpm_state(tpm_state, runner)
    uuid = format_data_volume(out, recovery, size=size)
    with FileRange(out) as storage, Swtpm.start(state, runner=runner) as swtpm:
        volume = Luks2Volume.open(storage)
        volume.unlock_passphrase(recovery, keyslot=0)
        tpm = TssTpm(swtpm.uri)
        try:
            enrollment = enroll_tpm_signed(
                volume,
                tpm,
                pcr_public_key_pem,
                pubkey_pcrs=SIGNED_PCRS,
                pcrs=(),  # PCR 7 by value needs a predicted value: see docs/vm.md
            )
        finally:
            tpm.close()
            volume.lock()
    return DataVolume(out, uuid, enrollment, state)
