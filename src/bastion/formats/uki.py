"""The sections of a Unified Kernel Image, and reading them out of a PE image.

A UKI is a PE/COFF image of systemd's EFI stub with the kernel, its command line, the
initrd and their companions added as sections. This module names the sections bastion
writes, in the order it writes them, and returns their contents from an image's bytes
(pure: the PE codec does the parsing and bounds every size).
"""

from __future__ import annotations

import re

from bastion.errors import FormatError
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


def cmdline_root_hash(cmdline: str) -> bytes | None:
    """The ``roothash=`` of a kernel command line: the last one, as systemd's
    veritysetup generator reads it; None without one, FormatError if it is not 64
    lowercase hex digits."""
    found = [w[len("roothash=") :] for w in cmdline.split() if w.startswith("roothash=")]
    if not found:
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", found[-1]):
        raise FormatError(f"roothash= on the kernel command line is {found[-1][:80]!r}")
    return bytes.fromhex(found[-1])


def uki_root_hash(uki: bytes) -> bytes | None:
    """The ``roothash=`` of a UKI's ``.cmdline`` (up to its NUL); None when ``uki`` is no
    UKI or its command line has none, FormatError when the value is malformed."""
    try:
        cmdline = uki_sections(uki).get(".cmdline", b"")
    except FormatError:
        return None
    return cmdline_root_hash(cmdline.split(b"\0", 1)[0].decode("ascii", "replace"))
