"""The sim boot chain of a real bastion disk (ADR 0027): UEFI ``firmware`` ->
systemd-boot ``loader`` -> systemd-``stub`` -> initrd (``data``: the data volume by the
signed PCR 11 policy) -> running, staged by ``efi_chain``; ``policy`` reads the signed
security profile. This module only reads back what a boot left: its event log.
"""

from __future__ import annotations

from pathlib import Path

from bastion.device.boot.efi_chain import EVENTLOG_FILE
from bastion.device.platform.sim import SimPlatform
from bastion.errors import FormatError
from bastion.formats import eventlog as el


def read_eventlog(folder: Path) -> el.EventLog:
    """The firmware event log of the sim device's last boot (``DEV/eventlog.bin``)."""
    plat = SimPlatform(folder)
    _ = plat.config  # NotFoundError naming the folder when it is not a device
    raw = plat.load(EVENTLOG_FILE)
    if raw is None:
        raise FormatError(f"device {folder} has no event log yet: boot it first")
    return el.parse(raw)
