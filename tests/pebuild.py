"""A tiny synthetic PE32+ image for the PE and Authenticode tests (no system files)."""

from __future__ import annotations

import struct

FILE_ALIGN = 0x200
SECTION_ALIGN = 0x1000


def make_pe(
    sections: tuple[tuple[str, bytes], ...] = ((".text", b"\xc3" * 100), (".data", b"D" * 700)),
    *,
    n_dirs: int = 16,
    spare_headers: int = 4,
    trailing: bytes = b"",
) -> bytes:
    """A PE32+ EFI application with ``sections`` laid out back to back after the headers."""
    opt_size = 112 + 8 * n_dirs
    pe_off = 0x80
    table = pe_off + 24 + opt_size
    headers = -(-(table + 40 * (len(sections) + spare_headers)) // FILE_ALIGN) * FILE_ALIGN
    out = bytearray(headers)
    out[0:2] = b"MZ"
    struct.pack_into("<I", out, 0x3C, pe_off)
    out[pe_off : pe_off + 4] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", out, pe_off + 4, 0x8664, len(sections), 0, 0, 0, opt_size, 0x206)
    opt = pe_off + 24
    struct.pack_into("<H", out, opt, 0x20B)
    struct.pack_into("<II", out, opt + 32, SECTION_ALIGN, FILE_ALIGN)
    struct.pack_into("<III", out, opt + 60, headers, 0x1234ABCD, 10)  # headers, checksum
    struct.pack_into("<H", out, opt + 68, 10)  # EFI application
    struct.pack_into("<I", out, opt + 108, n_dirs)
    vaddr = SECTION_ALIGN
    for i, (name, content) in enumerate(sections):
        raw = -(-len(content) // FILE_ALIGN) * FILE_ALIGN
        ptr = len(out)
        out += content + bytes(raw - len(content))
        struct.pack_into(
            "<8sIIIIIIHHI",
            out,
            table + 40 * i,
            name.encode(),
            len(content),
            vaddr,
            raw,
            ptr,
            0,
            0,
            0,
            0,
            0x40000040,
        )
        vaddr += -(-len(content) // SECTION_ALIGN) * SECTION_ALIGN
    struct.pack_into("<I", out, opt + 56, vaddr)
    return bytes(out) + trailing
