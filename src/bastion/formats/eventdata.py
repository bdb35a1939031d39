"""What one TCG event's data says, decoded for people. Pure.

:mod:`bastion.formats.eventlog` parses a log into events (PCR, type, digests, raw data);
this module reads the *data* of the event types a UEFI boot writes, for display and
reports (the dashboard's device page, a CLI dump). Nothing here decides trust: the
verifier compares digests, never these decoded texts. Structures (TCG PC Client
Platform Firmware Profile 1.05 section 10, UEFI 2.10; integers little-endian):

* ``UEFI_VARIABLE_DATA`` (``EV_EFI_VARIABLE_*``): vendor GUID, u64 name length in
  UTF-16 code units, u64 data length, the name (UTF-16LE), the data. ``Boot####`` data
  is an ``EFI_LOAD_OPTION`` (u32 attributes, u16 device-path length, a NUL-terminated
  UTF-16 description, ...), ``BootOrder`` a list of u16.
* ``UEFI_IMAGE_LOAD_EVENT`` (``EV_EFI_BOOT_SERVICES_APPLICATION``/``_DRIVER``,
  ``EV_EFI_RUNTIME_SERVICES_DRIVER``): u64 location, u64 length, u64 link-time address,
  u64 device-path length, the device path: nodes of u8 type, u8 subtype, u16 length;
  a media file-path node (4/4) carries the image's path (the UKI's ``\\EFI\\Linux\\...``).
  bastion's simulated firmware logs the bare UTF-16 path instead; both are read.
* strings: ``EV_IPL`` (systemd-stub: the UKI's section names in PCR 11, the kernel
  command line in PCR 12), ``EV_EFI_ACTION``/``EV_ACTION``, ``EV_S_CRTM_VERSION``: UTF-16LE
  when the bytes are, else ASCII/UTF-8; trailing NULs dropped.
* ``EV_EVENT_TAG``: u32 tag id, u32 size, description (the Linux EFI stub's
  ``LOADED_IMAGE::LoadOptions``, i.e. the command line, and ``Linux initrd``).
* ``EV_EFI_PLATFORM_FIRMWARE_BLOB`` (u64 base, u64 length) and ``_BLOB2`` (u8 size,
  description, base, length); ``EV_EFI_GPT_EVENT`` (the GPT header, u64 count, entries:
  their names); ``EV_SEPARATOR``; ``EV_NO_ACTION`` (Spec ID, StartupLocality).

:func:`decode` raises :class:`FormatError` for a structure that does not hold together
(an event type whose layout is known, but lengths that disagree). :func:`describe`
never raises: it falls back to a hex excerpt and says why. Every text is made inert
for display: control and format characters (newlines, escapes, bidirectional
overrides) are written as ``\\uXXXX`` and the text is cut at :data:`TEXT_MAX` characters.
"""

from __future__ import annotations

import struct
import unicodedata
import uuid
from dataclasses import dataclass

from bastion.errors import FormatError
from bastion.formats import eventlog as el
from bastion.formats.efivars import parse_guid
from bastion.limits import EFI_VARIABLE_NAME_MAX_CHARS

#: characters of one decoded text (longer ones end in "...")
TEXT_MAX = 1024
#: bytes shown as hex when the data is not decoded
HEX_MAX = 64
#: GPT entries named in an EV_EFI_GPT_EVENT (a GPT has 128 at most)
GPT_ENTRIES_MAX = 128

#: TCG PFP 1.05 section 10.4.1 event type names
EVENT_TYPES: dict[int, str] = {
    0x0: "EV_PREBOOT_CERT",
    0x1: "EV_POST_CODE",
    0x2: "EV_UNUSED",
    0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR",
    0x5: "EV_ACTION",
    0x6: "EV_EVENT_TAG",
    0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION",
    0x9: "EV_CPU_MICROCODE",
    0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES",
    0xC: "EV_COMPACT_HASH",
    0xD: "EV_IPL",
    0xE: "EV_IPL_PARTITION_DATA",
    0xF: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}
_VARIABLES = frozenset({0x80000001, 0x80000002, 0x8000000C, 0x800000E0})
_IMAGES = frozenset({0x80000003, 0x80000004, 0x80000005})
_STRINGS = frozenset(
    {el.EventType.EV_IPL, el.EventType.EV_ACTION, el.EventType.EV_EFI_ACTION, 0x8, 0xA}
)
#: the Linux EFI stub's tagged events (drivers/firmware/efi/libstub/efi-stub-helper.c)
LINUX_TAGS = {0x8F3B22ED: "command line", 0x8F3B22EC: "initrd"}
_DEVICE_PATH_END = 0x7F
_MEDIA, _MEDIA_HARD_DRIVE, _MEDIA_FILE_PATH = 4, 1, 4


@dataclass(frozen=True, slots=True)
class EventData:
    """An event's data for people: what it is (``kind``), one line of text, and named
    fields (e.g. the variable's vendor GUID)."""

    kind: str
    text: str
    fields: tuple[tuple[str, str], ...] = ()


def type_name(event_type: int) -> str:
    """``EV_EFI_ACTION`` etc., or the number in hex for a type the profile does not name."""
    return EVENT_TYPES.get(event_type, f"0x{event_type:08x}")


def inert(text: str, limit: int = TEXT_MAX) -> str:
    """``text`` with control and format characters escaped, cut at ``limit`` characters."""
    out = []
    for char in text:
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    joined = "".join(out)
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def _hex(data: bytes) -> str:
    shown = data[:HEX_MAX].hex()
    return shown + ("..." if len(data) > HEX_MAX else "")


def _unpack(fmt: str, data: bytes, offset: int, what: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise FormatError(f"{what}: truncated at offset {offset} (need {size} bytes)")
    return struct.unpack_from(fmt, data, offset)


def _utf16(data: bytes, what: str) -> str:
    if len(data) % 2:
        raise FormatError(f"{what}: odd number of bytes ({len(data)}) for UTF-16")
    try:
        return data.decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{what}: not UTF-16LE: {exc}") from exc


def _utf16z(data: bytes, offset: int, what: str) -> tuple[str, int]:
    """A NUL-terminated UTF-16LE string at ``offset``; returns it and the offset after."""
    for end in range(offset, len(data) - 1, 2):
        if data[end : end + 2] == b"\0\0":
            return _utf16(data[offset:end], what), end + 2
    raise FormatError(f"{what}: no NUL ends the UTF-16 string")


def string(data: bytes) -> str:
    """Event data that is text: UTF-16LE when it looks so (even length, most odd bytes
    NUL), else UTF-8 with replacement; trailing NULs dropped. Never raises."""
    high = data[1::2]
    if len(data) >= 2 and len(data) % 2 == 0 and 2 * high.count(0) > len(high):
        text = data.decode("utf-16-le", errors="replace")
    else:
        text = data.decode("utf-8", errors="replace")
    return text.rstrip("\0")


# --- UEFI_VARIABLE_DATA --------------------------------------------------------------------


def _variable(data: bytes) -> EventData:
    what = "UEFI_VARIABLE_DATA"
    vendor: uuid.UUID = parse_guid(data, 0)
    name_chars, data_size = _unpack("<QQ", data, 16, what)
    if name_chars > EFI_VARIABLE_NAME_MAX_CHARS:
        raise FormatError(f"{what}: name of {name_chars} characters")
    name_end = 32 + 2 * name_chars
    if name_end + data_size != len(data):
        raise FormatError(
            f"{what}: name and data sizes give {name_end + data_size} bytes, the event has "
            f"{len(data)}"
        )
    name = _utf16(data[32:name_end], what).rstrip("\0")
    value = data[name_end:]
    fields = (("vendor", str(vendor)), ("size", str(len(value))))
    return EventData("variable", _variable_text(name, value), fields)


def _variable_text(name: str, value: bytes) -> str:
    if name in {"SecureBoot", "SetupMode", "AuditMode", "DeployedMode"} and len(value) == 1:
        return f"{name} = {value[0]}"
    if name == "BootOrder" and len(value) % 2 == 0:
        order = struct.unpack(f"<{len(value) // 2}H", value)
        return f"BootOrder = {', '.join(f'{n:04X}' for n in order)}"
    if len(name) == 8 and name.startswith("Boot") and len(value) >= 6:
        try:
            description, _ = _utf16z(value, 6, f"{name} EFI_LOAD_OPTION")
        except FormatError:
            return f"{name} ({len(value)} bytes)"
        return f"{name}: {description}"
    return f"{name} ({len(value)} bytes)"


# --- UEFI_IMAGE_LOAD_EVENT and device paths -------------------------------------------------


def device_path(data: bytes) -> tuple[str, ...]:
    """The readable nodes of an EFI device path: file paths, and hard-drive partitions."""
    what = "EFI device path"
    out: list[str] = []
    pos = 0
    while pos < len(data):
        node_type, subtype, length = _unpack("<BBH", data, pos, what)
        if length < 4 or pos + length > len(data):
            raise FormatError(f"{what}: node at offset {pos} has length {length}")
        body = data[pos + 4 : pos + length]
        if node_type == _DEVICE_PATH_END:
            break
        if node_type == _MEDIA and subtype == _MEDIA_FILE_PATH:
            out.append(_utf16(body, f"{what} file path").rstrip("\0"))
        elif node_type == _MEDIA and subtype == _MEDIA_HARD_DRIVE and len(body) >= 4:
            out.append(f"partition {_unpack('<I', body, 0, what)[0]}")
        pos += length
    return tuple(out)


def _image(data: bytes) -> EventData:
    what = "UEFI_IMAGE_LOAD_EVENT"
    if len(data) >= 32:
        location, length, _link, path_size = _unpack("<QQQQ", data, 0, what)
        if 32 + path_size == len(data):
            nodes = device_path(data[32:])
            files = [n for n in nodes if not n.startswith("partition ")]
            text = " ".join(files) if files else f"device path ({path_size} bytes)"
            fields = (
                ("location", f"0x{location:x}"),
                ("length", str(length)),
                ("device path", " / ".join(nodes)),
            )
            return EventData("image", text, fields)
    if len(data) >= 2 and data.endswith(b"\0\0") and len(data) % 2 == 0:
        return EventData("image", _utf16(data, f"{what} path").rstrip("\0"))
    raise FormatError(f"{what}: {len(data)} bytes hold neither the structure nor a path")


# --- the rest ------------------------------------------------------------------------------


def _tagged(data: bytes) -> EventData:
    what = "TCG_PCClientTaggedEvent"
    tag, size = _unpack("<II", data, 0, what)
    if 8 + size != len(data):
        raise FormatError(f"{what}: size {size} does not match the {len(data) - 8} bytes given")
    description = string(data[8:])
    known = LINUX_TAGS.get(tag)
    text = f"{description} (Linux EFI stub: {known})" if known else description
    return EventData("tagged", text, (("tag", f"0x{tag:08x}"),))


def _firmware_blob(event_type: int, data: bytes) -> EventData:
    what = "UEFI_PLATFORM_FIRMWARE_BLOB"
    offset, description = 0, ""
    if event_type == 0x8000000A:
        (size,) = _unpack("<B", data, 0, what)
        description = string(data[1 : 1 + size])
        offset = 1 + size
    base, length = _unpack("<QQ", data, offset, what)
    if offset + 16 != len(data):
        raise FormatError(f"{what}: {len(data) - offset - 16} trailing bytes")
    text = f"{description + ' ' if description else ''}base 0x{base:x}, length 0x{length:x}"
    return EventData("firmware", text)


def _gpt(data: bytes) -> EventData:
    what = "UEFI_GPT_DATA"
    (header_size,) = _unpack("<I", data, 12, what)
    (entry_size,) = _unpack("<I", data, 84, what)
    (count,) = _unpack("<Q", data, header_size, what)
    if count > GPT_ENTRIES_MAX or entry_size < 128:
        raise FormatError(f"{what}: {count} entries of {entry_size} bytes")
    start = header_size + 8
    if start + count * entry_size != len(data):
        raise FormatError(f"{what}: {count} entries do not fill the {len(data)} bytes")
    names = []
    for index in range(count):
        raw = data[start + index * entry_size + 56 : start + index * entry_size + 128]
        names.append(_utf16(raw, f"{what} entry name").split("\0", 1)[0])
    return EventData("gpt", f"GPT, {count} partitions: {', '.join(names)}")


def _no_action(data: bytes) -> EventData:
    if data.startswith(el.SPEC_ID_SIGNATURE):
        return EventData("spec-id", "Spec ID Event03 (the log's header)")
    if data.startswith(el.STARTUP_LOCALITY_SIGNATURE) and len(data) == 17:
        return EventData("locality", f"StartupLocality {data[16]}")
    return EventData("no-action", string(data.split(b"\0", 1)[0]))


def _separator(data: bytes) -> EventData:
    if data == bytes(4):
        return EventData("separator", "separator")
    if data == b"\1\0\0\0":
        return EventData("separator", "separator: firmware error")
    return EventData("separator", f"separator {data.hex()}")


def decode(event_type: int, data: bytes) -> EventData:
    """The data of one event, decoded (FormatError when a known structure is malformed;
    unknown types give their data as hex). Texts are not yet made inert: see
    :func:`describe`."""
    if event_type in _VARIABLES:
        return _variable(data)
    if event_type in _IMAGES:
        return _image(data)
    if event_type == el.EventType.EV_EVENT_TAG:
        return _tagged(data)
    if event_type in {0x80000008, 0x8000000A}:
        return _firmware_blob(event_type, data)
    if event_type == 0x80000006:
        return _gpt(data)
    if event_type == el.EventType.EV_NO_ACTION:
        return _no_action(data)
    if event_type == el.EventType.EV_SEPARATOR:
        return _separator(data)
    if event_type in _STRINGS:
        return EventData("string", string(data))
    return EventData("bytes", _hex(data) if data else "(no data)")


def describe(event_type: int, data: bytes) -> EventData:
    """:func:`decode`, never raising (a malformed structure is shown as hex with the
    reason), every text made inert and bounded for display."""
    try:
        decoded = decode(event_type, data)
    except FormatError as exc:
        return EventData("malformed", inert(f"{_hex(data)} ({exc})"))
    return EventData(
        decoded.kind,
        inert(decoded.text),
        tuple((name, inert(value)) for name, value in decoded.fields),
    )
