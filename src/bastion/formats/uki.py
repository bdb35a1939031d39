"""The sections of a Unified Kernel Image, and reading them out of a PE image.

A UKI is a PE/COFF image of systemd's EFI stub with the kernel, its command line, the
initrd and their companions added as sections. This module names the sections bastion
writes, in the order it writes them, and returns their contents from an image's bytes
(pure: the PE codec does the parsing and bounds every size).
"""

from __future__ import annotations

from bastion.formats.pe import PeImage

#: sections bastion adds, in file order
SECTION_ORDER = (".osrel", ".cmdline", ".uname", ".pcrpkey", ".pcrsig", ".initrd", ".linux")


def uki_sections(data: bytes) -> dict[str, bytes]:
    """The UKI sections present in a UKI image (name to content)."""
    image = PeImage.parse(data)
    out: dict[str, bytes] = {}
    for name in SECTION_ORDER:
        section = image.section(name)
        if section is not None:
            out[name] = image.section_data(section)
    return out
