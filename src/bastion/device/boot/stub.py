"""The sim's systemd-stub and Linux EFI stub: what a UKI hands the kernel, and measures.

Pure: the UKI's bytes in, the kernel's hand-off and the events out.

* systemd-stub 252 measures the UKI's sections into PCR 11 (``EV_IPL``; the digest of
  the name with its NUL, then of the content; its own order, empty sections skipped:
  :func:`bastion.trust.pcr11.measurements`), then hands the kernel the ``.cmdline``
  (up to its first NUL) and the initrd it assembles: ``.initrd`` followed by cpio
  archives carrying ``.pcrsig`` and ``.pcrpkey`` under ``/.extra``
  (:func:`bastion.trust.pcr_boot.stub_initrd`);
* the Linux EFI stub measures the command line (as UTF-16 with its NUL) and the initrd
  into PCR 9 (:func:`bastion.trust.pcr_boot.pcr9_events`).

Then the kernel runs; on sim the "initrd" stage is bastion's (device/boot/efi_chain.py)
and reads the same command line and sections. The security version the fuses are
compared with is ``BASTION_SECURITY_VERSION=`` in ``.osrel`` (ADR 0027).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bastion.errors import FormatError
from bastion.formats import eventlog as el
from bastion.formats.uki import uki_sections
from bastion.trust import pcr11, pcr_boot

#: the os-release key carrying the image's security version (anti-rollback)
SECURITY_VERSION_KEY = "BASTION_SECURITY_VERSION"
#: what systemd-pcrphase measures into PCR 11 when the initrd starts
PHASE_ENTER_INITRD = "enter-initrd"
#: and when it leaves it (switch-root)
PHASE_LEAVE_INITRD = "leave-initrd"


@dataclass(frozen=True, slots=True)
class KernelHandoff:
    """What the stubs hand the kernel: its command line, initrd, and the UKI's sections."""

    sections: Mapping[str, bytes]
    cmdline: str
    initrd: bytes

    def params(self) -> dict[str, str]:
        """The command line's ``key=value`` words (the last of a key wins, as Linux)."""
        out: dict[str, str] = {}
        for word in self.cmdline.split():
            key, _, value = word.partition("=")
            out[key] = value
        return out


def handoff(uki: bytes) -> KernelHandoff:
    """The sections of ``uki`` and what systemd-stub passes on (FormatError if none)."""
    sections = uki_sections(uki)
    if not sections.get(".linux"):
        raise FormatError("the UKI has no .linux section: nothing to boot")
    return KernelHandoff(sections, pcr_boot.stub_cmdline(sections), pcr_boot.stub_initrd(sections))


def stub_events(sections: Mapping[str, bytes]) -> list[el.Event]:
    """systemd-stub's PCR 11 events (trust/pcr11.py, shared with the golden values)."""
    return pcr11.stub_events(sections)


def kernel_events(kernel: KernelHandoff) -> list[el.Event]:
    """The Linux EFI stub's PCR 9 events (command line, initrd)."""
    return pcr_boot.pcr9_events(kernel.cmdline, kernel.initrd)


def security_version(osrel: Mapping[str, str]) -> int:
    """``BASTION_SECURITY_VERSION`` from ``.osrel`` (0 when absent; FormatError if bad)."""
    text = osrel.get(SECURITY_VERSION_KEY, "0")
    if not text.isdigit() or len(text) > 9:
        raise FormatError(f".osrel {SECURITY_VERSION_KEY}={text!r} is not a small integer")
    return int(text)
