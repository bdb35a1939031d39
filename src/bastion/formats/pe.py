"""PE/COFF images as UEFI loads them: headers, sections, the certificate table, the
Authenticode image hash, and the two rewrites bastion needs (add sections, set the
certificate table).

Layout (Microsoft PE Format; UEFI 2.10 §2.1.1): an MS-DOS stub whose ``e_lfanew`` (u32 at
0x3c) points to ``"PE\\0\\0"``, the 20-byte COFF file header, the optional header (PE32
``0x10b`` or PE32+ ``0x20b``) ending in ``NumberOfRvaAndSizes`` data directories, then
the section table (40 bytes per section). Everything is little-endian.

The certificate table is data directory 4 (``IMAGE_DIRECTORY_ENTRY_SECURITY``); unlike
every other directory its "address" is a **file offset**. It holds WIN_CERTIFICATE
entries (``u32 dwLength, u16 wRevision, u16 wCertificateType, bCertificate``), each
starting on an 8-byte boundary. ``dwLength`` counts the 8-byte header; sbsign (and bastion) write it
unpadded, other signers padded, so a reader steps by ``round_up(dwLength, 8)``.

Authenticode image hash (Microsoft "Windows Authenticode Portable Executable Signature
Format", §"Calculating the PE Image Hash"): hash the headers up to ``SizeOfHeaders``
minus the ``CheckSum`` field and the certificate-table directory entry, then each
section's raw data in ``PointerToRawData`` order, then whatever follows the last section
up to the certificate table (that includes the zero padding that aligns the table to 8
bytes). The certificate table is never hashed, so signatures can be added without
changing the hash. bastion refuses images where that recipe is ambiguous (overlapping
sections, gaps between sections, a certificate table that is not at the end of the
file): implementations disagree on those, and a hash that two verifiers compute
differently must not be trusted.

Pure: bytes in, frozen objects and bytes out. Every size and count taken from the input
is checked against :mod:`bastion.limits`.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from bastion.errors import FormatError, LimitError
from bastion.limits import (
    PE_MAX_CERT_TABLE_SIZE,
    PE_MAX_CERTIFICATES,
    PE_MAX_DATA_DIRECTORIES,
    PE_MAX_IMAGE_SIZE,
    PE_MAX_SECTIONS,
)

DOS_MAGIC = b"MZ"
PE_MAGIC = b"PE\0\0"
PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B
COFF_HEADER_SIZE = 20
SECTION_HEADER_SIZE = 40
DIRECTORY_SECURITY = 4
WIN_CERT_HEADER_SIZE = 8
WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
CERT_TABLE_ALIGNMENT = 8

# section characteristics (IMAGE_SCN_*)
SCN_CNT_CODE = 0x00000020
SCN_CNT_INITIALIZED_DATA = 0x00000040
SCN_MEM_EXECUTE = 0x20000000
SCN_MEM_READ = 0x40000000
SCN_MEM_WRITE = 0x80000000

# COFF characteristics
FILE_LOCAL_SYMS_STRIPPED = 0x0008

_SYMBOL_SIZE = 18  # one COFF symbol table record

# offsets inside the optional header (same for PE32 and PE32+ up to the data directories)
_OPT_SIZE_OF_INITIALIZED_DATA = 8
_OPT_SECTION_ALIGNMENT = 32
_OPT_FILE_ALIGNMENT = 36
_OPT_SIZE_OF_IMAGE = 56
_OPT_SIZE_OF_HEADERS = 60
_OPT_CHECKSUM = 64
_OPT_SUBSYSTEM = 68
_OPT_DIRECTORIES = {PE32_MAGIC: 96, PE32PLUS_MAGIC: 112}


class HashName(enum.StrEnum):
    """Digest algorithms an Authenticode signature may use here."""

    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"


def round_up(value: int, alignment: int) -> int:
    """``value`` rounded up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True, slots=True)
class Section:
    """One section header (IMAGE_SECTION_HEADER) and where it sits in the file."""

    name: str
    virtual_size: int
    virtual_address: int
    size_of_raw_data: int
    pointer_to_raw_data: int
    characteristics: int
    header_offset: int

    @property
    def raw_end(self) -> int:
        """File offset just past this section's raw data."""
        return self.pointer_to_raw_data + self.size_of_raw_data

    @property
    def content_size(self) -> int:
        """Bytes of meaningful content: the virtual size capped by the raw size (the raw
        size when VirtualSize is 0, as EDK2's loader reads it)."""
        if not self.virtual_size:
            return self.size_of_raw_data
        return min(self.virtual_size, self.size_of_raw_data)


@dataclass(frozen=True, slots=True)
class DataDirectory:
    """One data directory entry; for the certificate table ``address`` is a file offset."""

    address: int
    size: int


@dataclass(frozen=True, slots=True)
class WinCertificate:
    """One WIN_CERTIFICATE entry of the certificate table."""

    certificate: bytes
    revision: int = WIN_CERT_REVISION_2_0
    cert_type: int = WIN_CERT_TYPE_PKCS_SIGNED_DATA

    def to_bytes(self) -> bytes:
        """The entry, zero-padded to 8 bytes; ``dwLength`` excludes the padding (as sbsign)."""
        length = WIN_CERT_HEADER_SIZE + len(self.certificate)
        body = struct.pack("<IHH", length, self.revision, self.cert_type) + self.certificate
        return body + bytes(round_up(length, CERT_TABLE_ALIGNMENT) - length)


def parse_certificate_table(data: bytes) -> tuple[WinCertificate, ...]:
    """Split a certificate table into entries (each on an 8-byte boundary)."""
    if len(data) > PE_MAX_CERT_TABLE_SIZE:
        raise LimitError(
            f"PE certificate table is {len(data)} bytes, limit {PE_MAX_CERT_TABLE_SIZE}"
        )
    out: list[WinCertificate] = []
    pos = 0
    while pos < len(data):
        if len(out) >= PE_MAX_CERTIFICATES:
            raise LimitError(f"PE certificate table has more than {PE_MAX_CERTIFICATES} entries")
        if pos + WIN_CERT_HEADER_SIZE > len(data):
            raise FormatError(
                f"PE certificate table: truncated entry header at offset {pos} "
                f"({len(data) - pos} bytes left)"
            )
        length, revision, cert_type = struct.unpack_from("<IHH", data, pos)
        if length < WIN_CERT_HEADER_SIZE or pos + length > len(data):
            raise FormatError(
                f"PE certificate table: entry at offset {pos} claims {length} bytes, "
                f"{len(data) - pos} remain"
            )
        out.append(
            WinCertificate(data[pos + WIN_CERT_HEADER_SIZE : pos + length], revision, cert_type)
        )
        pos = round_up(pos + length, CERT_TABLE_ALIGNMENT)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class PeImage:
    """A parsed PE/COFF image; ``data`` is the whole file."""

    data: bytes
    pe_offset: int
    machine: int
    characteristics: int
    pointer_to_symbol_table: int
    number_of_symbols: int
    magic: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    checksum: int
    subsystem: int
    directories: tuple[DataDirectory, ...]
    sections: tuple[Section, ...]
    certificates: tuple[WinCertificate, ...]

    # --- layout -------------------------------------------------------------------------

    @property
    def optional_header_offset(self) -> int:
        """File offset of the optional header."""
        return self.pe_offset + 4 + COFF_HEADER_SIZE

    @property
    def checksum_offset(self) -> int:
        """File offset of the CheckSum field (excluded from the Authenticode hash)."""
        return self.optional_header_offset + _OPT_CHECKSUM

    @property
    def directories_offset(self) -> int:
        """File offset of data directory 0."""
        return self.optional_header_offset + _OPT_DIRECTORIES[self.magic]

    @property
    def section_table_end(self) -> int:
        """File offset just past the last section header."""
        if self.sections:
            return self.sections[-1].header_offset + SECTION_HEADER_SIZE
        size_of_optional: int = struct.unpack_from("<H", self.data, self.pe_offset + 4 + 16)[0]
        return self.optional_header_offset + size_of_optional

    @property
    def security_directory(self) -> DataDirectory:
        """The certificate-table directory entry (zero when absent)."""
        if len(self.directories) <= DIRECTORY_SECURITY:
            return DataDirectory(0, 0)
        return self.directories[DIRECTORY_SECURITY]

    def section(self, name: str) -> Section | None:
        """The first section called ``name``, or None."""
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def section_data(self, section: Section) -> bytes:
        """A section's content (``content_size`` bytes of its raw data)."""
        start = section.pointer_to_raw_data
        return self.data[start : start + section.content_size]

    def _hashed_sections(self) -> list[Section]:
        """Sections with raw data, in file order; FormatError if they overlap or leave gaps."""
        secs = sorted(
            (s for s in self.sections if s.size_of_raw_data), key=lambda s: s.pointer_to_raw_data
        )
        pos = self.size_of_headers
        for s in secs:
            if s.pointer_to_raw_data < pos:
                raise FormatError(
                    f"PE section {s.name!r} at file offset {s.pointer_to_raw_data} overlaps "
                    f"the data before it (ends at {pos})"
                )
            if s.pointer_to_raw_data > pos:
                raise FormatError(
                    f"PE section {s.name!r} starts at file offset {s.pointer_to_raw_data}, "
                    f"{s.pointer_to_raw_data - pos} bytes after the previous data: "
                    "the Authenticode hash of an image with gaps is ambiguous"
                )
            pos = s.raw_end
        return secs

    def signed_data_end(self) -> int:
        """File offset where the hashed image ends (the start of the certificate table)."""
        sec = self.security_directory
        if sec.size == 0:
            return len(self.data)
        return sec.address

    def authenticode_digest(self, hash_name: str = "sha256") -> bytes:
        """The Authenticode image hash with ``hash_name`` (sha256, sha384 or sha512)."""
        if len(self.directories) <= DIRECTORY_SECURITY:
            raise FormatError(
                f"PE image has {len(self.directories)} data directories: no certificate table "
                "entry, so it cannot carry an Authenticode signature"
            )
        try:
            h = hashlib.new(HashName(hash_name).value)
        except ValueError as exc:
            raise FormatError(f"Authenticode hash {hash_name!r} is not supported") from exc
        view = memoryview(self.data)
        cert_entry = self.directories_offset + 8 * DIRECTORY_SECURITY
        h.update(view[: self.checksum_offset])
        h.update(view[self.checksum_offset + 4 : cert_entry])
        h.update(view[cert_entry + 8 : self.size_of_headers])
        pos = self.size_of_headers
        for s in self._hashed_sections():
            h.update(view[s.pointer_to_raw_data : s.raw_end])
            pos = s.raw_end
        end = self.signed_data_end()
        if end < pos:
            raise FormatError(
                f"PE certificate table at offset {end} lies inside the sections (end at {pos})"
            )
        h.update(view[pos:end])
        return h.digest()

    # --- rewrites -----------------------------------------------------------------------

    def with_certificates(self, certificates: Sequence[WinCertificate]) -> bytes:
        """The image with its certificate table replaced by ``certificates`` (none: unsigned).

        The image is zero-padded to 8 bytes before the table; that padding is hashed, so
        sign the image returned by :meth:`prepared_for_signing`, whose hash is the same.
        """
        base = bytearray(self.prepared_for_signing().data)
        table = b"".join(c.to_bytes() for c in certificates)
        if len(table) > PE_MAX_CERT_TABLE_SIZE:
            raise LimitError(f"certificate table of {len(table)} bytes exceeds the limit")
        entry = self.directories_offset + 8 * DIRECTORY_SECURITY
        struct.pack_into("<II", base, entry, len(base) if table else 0, len(table))
        return bytes(base) + table

    def prepared_for_signing(self) -> PeImage:
        """The image without its certificate table, padded to 8 bytes, directory zeroed."""
        if len(self.directories) <= DIRECTORY_SECURITY:
            raise FormatError("PE image has no certificate table directory entry")
        end = self.signed_data_end()
        if self.security_directory.size == 0 and end % CERT_TABLE_ALIGNMENT == 0:
            return self
        base = bytearray(self.data[:end])
        base += bytes(round_up(len(base), CERT_TABLE_ALIGNMENT) - len(base))
        struct.pack_into("<II", base, self.directories_offset + 8 * DIRECTORY_SECURITY, 0, 0)
        return PeImage.parse(bytes(base))

    # --- parsing ------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> PeImage:
        """Decode and check a PE/COFF image; FormatError (or LimitError) if malformed."""
        data = bytes(data)
        if len(data) > PE_MAX_IMAGE_SIZE:
            raise LimitError(f"PE image is {len(data)} bytes, limit {PE_MAX_IMAGE_SIZE}")
        if len(data) < 0x40 or data[:2] != DOS_MAGIC:
            raise FormatError("not a PE image: the MZ header is missing")
        pe_offset = struct.unpack_from("<I", data, 0x3C)[0]
        if pe_offset + 4 + COFF_HEADER_SIZE > len(data):
            raise FormatError(f"PE header offset {pe_offset} is beyond the {len(data)}-byte file")
        if data[pe_offset : pe_offset + 4] != PE_MAGIC:
            raise FormatError(f"not a PE image: no PE signature at offset {pe_offset}")
        (machine, n_sections, _timestamp, sym_ptr, n_syms, opt_size, characteristics) = (
            struct.unpack_from("<HHIIIHH", data, pe_offset + 4)
        )
        if n_sections > PE_MAX_SECTIONS:
            raise LimitError(f"PE image has {n_sections} sections, limit {PE_MAX_SECTIONS}")
        opt = pe_offset + 4 + COFF_HEADER_SIZE
        if opt + 2 > len(data) or opt_size < 2:
            raise FormatError("PE optional header is missing")
        magic = struct.unpack_from("<H", data, opt)[0]
        if magic not in _OPT_DIRECTORIES:
            raise FormatError(f"PE optional header magic 0x{magic:x}: expected 0x10b or 0x20b")
        dir_off = _OPT_DIRECTORIES[magic]
        if opt_size < dir_off or opt + opt_size > len(data):
            raise FormatError(
                f"PE optional header of {opt_size} bytes is too short for magic 0x{magic:x} "
                f"(needs {dir_off}) or runs past the file"
            )
        section_alignment, file_alignment = struct.unpack_from(
            "<II", data, opt + _OPT_SECTION_ALIGNMENT
        )
        size_of_image, size_of_headers, checksum, subsystem = struct.unpack_from(
            "<IIIH", data, opt + _OPT_SIZE_OF_IMAGE
        )
        n_dirs = struct.unpack_from("<I", data, opt + dir_off - 4)[0]
        if n_dirs > PE_MAX_DATA_DIRECTORIES:
            raise LimitError(
                f"PE image has {n_dirs} data directories, limit {PE_MAX_DATA_DIRECTORIES}"
            )
        if dir_off + 8 * n_dirs > opt_size:
            raise FormatError(
                f"PE optional header of {opt_size} bytes cannot hold {n_dirs} data directories"
            )
        if not _is_pow2(section_alignment) or not _is_pow2(file_alignment):
            raise FormatError(
                f"PE alignments must be powers of two: section {section_alignment}, "
                f"file {file_alignment}"
            )
        directories = tuple(
            DataDirectory(*struct.unpack_from("<II", data, opt + dir_off + 8 * i))
            for i in range(n_dirs)
        )
        table = opt + opt_size
        table_end = table + SECTION_HEADER_SIZE * n_sections
        if table_end > size_of_headers or size_of_headers > len(data):
            raise FormatError(
                f"PE section table ends at {table_end}, SizeOfHeaders is {size_of_headers}, "
                f"file is {len(data)} bytes: expected table end <= headers <= file"
            )
        sections = []
        for i in range(n_sections):
            at = table + SECTION_HEADER_SIZE * i
            name_raw, vsize, vaddr, rsize, rptr = struct.unpack_from("<8sIIII", data, at)
            chars = struct.unpack_from("<I", data, at + 36)[0]
            name = name_raw.rstrip(b"\0").decode("latin-1")
            if rsize and (rptr < size_of_headers or rptr + rsize > len(data)):
                raise FormatError(
                    f"PE section {name!r} raw data [{rptr}, {rptr + rsize}) is outside "
                    f"[{size_of_headers}, {len(data)})"
                )
            sections.append(Section(name, vsize, vaddr, rsize, rptr, chars, at))
        certificates: tuple[WinCertificate, ...] = ()
        if n_dirs > DIRECTORY_SECURITY:
            sec = directories[DIRECTORY_SECURITY]
            if sec.size:
                if sec.size > PE_MAX_CERT_TABLE_SIZE:
                    raise LimitError(
                        f"PE certificate table is {sec.size} bytes, limit {PE_MAX_CERT_TABLE_SIZE}"
                    )
                if sec.address % CERT_TABLE_ALIGNMENT or sec.address < size_of_headers:
                    raise FormatError(
                        f"PE certificate table offset {sec.address} is not 8-byte aligned "
                        "or lies in the headers"
                    )
                if sec.address + sec.size != len(data):
                    raise FormatError(
                        f"PE certificate table [{sec.address}, {sec.address + sec.size}) does "
                        f"not end the {len(data)}-byte file (truncated or trailing data)"
                    )
                certificates = parse_certificate_table(data[sec.address :])
        return cls(
            data=data,
            pe_offset=pe_offset,
            machine=machine,
            characteristics=characteristics,
            pointer_to_symbol_table=sym_ptr,
            number_of_symbols=n_syms,
            magic=magic,
            section_alignment=section_alignment,
            file_alignment=file_alignment,
            size_of_image=size_of_image,
            size_of_headers=size_of_headers,
            checksum=checksum,
            subsystem=subsystem,
            directories=directories,
            sections=tuple(sections),
            certificates=certificates,
        )


@dataclass(frozen=True, slots=True)
class NewSection:
    """A section to add: its name (at most 8 bytes), content and characteristics."""

    name: str
    content: bytes
    characteristics: int = SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ

    def __post_init__(self) -> None:
        raw = self.name.encode("ascii", "strict") if self.name.isascii() else b""
        if not raw or len(raw) > 8 or b"\0" in raw:
            raise FormatError(f"PE section name {self.name!r}: expected 1-8 ASCII characters")


def _symbol_table_span(image: PeImage) -> tuple[int, int] | None:
    """(start, end) of a COFF symbol + string table when it is the file's tail, else None."""
    start = image.pointer_to_symbol_table
    if not start:
        return None
    end = start + _SYMBOL_SIZE * image.number_of_symbols
    if end + 4 <= len(image.data):
        end += struct.unpack_from("<I", image.data, end)[0]
    return (start, end) if end == len(image.data) else None


def add_sections(image: PeImage, new: Sequence[NewSection]) -> bytes:
    """``image`` with ``new`` sections appended after its last section.

    Placement follows ukify: a section's raw data starts at the next ``FileAlignment``
    boundary after the file's end and is zero-padded to a multiple of it; its virtual
    address is the first ``SectionAlignment`` boundary after the previous section's
    ``VirtualAddress + VirtualSize``; ``VirtualSize`` is the content length. A COFF symbol
    table at the end of the image (the Debian stub has one; images should not) is
    dropped, and ``SizeOfImage``, ``SizeOfInitializedData``, ``NumberOfSections`` are
    updated; ``CheckSum`` is zeroed (UEFI does not check it). Refuses signed images and
    images whose header area has no room for the new section headers.
    """
    if image.certificates or image.security_directory.size:
        raise FormatError("refusing to add sections to a signed PE image: strip it first")
    if not image.sections:
        raise FormatError("PE image has no sections to append after")
    if len(image.sections) + len(new) > PE_MAX_SECTIONS:
        raise LimitError(f"more than {PE_MAX_SECTIONS} sections")
    names = {s.name for s in image.sections}
    for n in new:
        if n.name in names:
            raise FormatError(f"PE image already has a section {n.name!r}")
        names.add(n.name)
    table_end = image.section_table_end
    if table_end + SECTION_HEADER_SIZE * len(new) > image.size_of_headers:
        raise FormatError(
            f"PE header area ({image.size_of_headers} bytes) has room for "
            f"{(image.size_of_headers - table_end) // SECTION_HEADER_SIZE} more section headers, "
            f"{len(new)} needed"
        )
    out = bytearray(image.data)
    characteristics = image.characteristics
    span = _symbol_table_span(image)
    if span is not None:
        del out[span[0] :]
        characteristics |= FILE_LOCAL_SYMS_STRIPPED
        struct.pack_into("<II", out, image.pe_offset + 4 + 8, 0, 0)
    last = max(image.sections, key=lambda s: s.virtual_address)
    vaddr = last.virtual_address + (last.virtual_size or last.size_of_raw_data)
    opt = image.optional_header_offset
    init_data = struct.unpack_from("<I", out, opt + _OPT_SIZE_OF_INITIALIZED_DATA)[0]
    for i, sec in enumerate(new):
        vaddr = round_up(vaddr, image.section_alignment)
        raw_ptr = round_up(len(out), image.file_alignment)
        raw_size = round_up(len(sec.content), image.file_alignment)
        out += bytes(raw_ptr - len(out))
        out += sec.content + bytes(raw_size - len(sec.content))
        header = struct.pack(
            "<8sIIIIIIHHI",
            sec.name.encode("ascii"),
            len(sec.content),
            vaddr,
            raw_size,
            raw_ptr,
            0,
            0,
            0,
            0,
            sec.characteristics,
        )
        out[table_end + SECTION_HEADER_SIZE * i : table_end + SECTION_HEADER_SIZE * (i + 1)] = (
            header
        )
        if sec.characteristics & SCN_CNT_INITIALIZED_DATA:
            init_data += len(sec.content)
        vaddr += len(sec.content)
    if vaddr > 0xFFFFFFFF or init_data > 0xFFFFFFFF:
        raise LimitError("PE image grows beyond the 32-bit address space")
    struct.pack_into("<H", out, image.pe_offset + 4 + 2, len(image.sections) + len(new))
    struct.pack_into("<H", out, image.pe_offset + 4 + 18, characteristics)
    struct.pack_into("<I", out, opt + _OPT_SIZE_OF_INITIALIZED_DATA, init_data)
    struct.pack_into("<I", out, opt + _OPT_SIZE_OF_IMAGE, round_up(vaddr, image.section_alignment))
    struct.pack_into("<I", out, opt + _OPT_CHECKSUM, 0)
    return bytes(out)
