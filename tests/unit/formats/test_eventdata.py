"""Decoding event data for people: a real firmware's log (tpm2_eventlog's reading of the
same file is the reference), the simulated chain's own events, a negative table, and
texts made inert (a device writes these bytes)."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from bastion.errors import FormatError
from bastion.formats import eventdata as ed
from bastion.formats import eventlog as el
from bastion.trust import pcr7, pcr_boot

VECTOR = Path(__file__).parents[2] / "vectors" / "boot" / "eventlog.bin"
GLOBAL = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")


def test_a_real_firmware_log_reads_as_tpm2_eventlog_reads_it() -> None:
    """tests/vectors/boot/eventlog.bin: OVMF 2022.11, systemd-boot/stub 252 (README)."""
    events = el.parse(VECTOR.read_bytes()).events
    seen = [(e.pcr, ed.type_name(e.event_type), ed.describe(e.event_type, e.data)) for e in events]
    texts = {(pcr, name, d.text) for pcr, name, d in seen}
    for expected in [
        (0, "EV_EFI_PLATFORM_FIRMWARE_BLOB", "base 0x820000, length 0xe0000"),
        (7, "EV_EFI_VARIABLE_DRIVER_CONFIG", "SecureBoot = 1"),
        (7, "EV_EFI_VARIABLE_DRIVER_CONFIG", "PK (708 bytes)"),
        (7, "EV_EFI_VARIABLE_DRIVER_CONFIG", "dbx (76 bytes)"),
        (7, "EV_EFI_VARIABLE_AUTHORITY", "db (704 bytes)"),
        (1, "EV_EFI_VARIABLE_BOOT", "BootOrder = 0001, 0000, 0002"),
        (1, "EV_EFI_VARIABLE_BOOT", "Boot0002: EFI Internal Shell"),
        (4, "EV_EFI_ACTION", "Calling EFI Application from Boot Option"),
        (4, "EV_EFI_BOOT_SERVICES_APPLICATION", "\\EFI\\BOOT\\BOOTX64.EFI"),
        (4, "EV_EFI_BOOT_SERVICES_APPLICATION", "\\EFI\\Linux\\bastion+2-1.efi"),
        (5, "EV_EFI_GPT_EVENT", "GPT, 4 partitions: esp, root-x86-64, root-x86-64-verity, data"),
        (11, "EV_IPL", ".linux"),
        (11, "EV_IPL", ".pcrpkey"),
        (9, "EV_EVENT_TAG", "LOADED_IMAGE::LoadOptions (Linux EFI stub: command line)"),
        (9, "EV_EVENT_TAG", "Linux initrd (Linux EFI stub: initrd)"),
        (5, "EV_EFI_ACTION", "Exit Boot Services Returned with Success"),
        (7, "EV_SEPARATOR", "separator"),
    ]:
        assert expected in texts, expected
    cmdline = [d.text for pcr, name, d in seen if pcr == 12 and name == "EV_IPL"]
    assert len(cmdline) == 1 and cmdline[0].startswith(
        "console=ttyS0 panic=-1 loglevel=4 roothash="
    )
    uki = next(d for _, _, d in seen if d.text.endswith("bastion+2-1.efi"))
    assert dict(uki.fields)["device path"] == "partition 1 / \\EFI\\Linux\\bastion+2-1.efi"
    assert dict(uki.fields)["length"] == "21870352"
    secure_boot = next(d for _, _, d in seen if d.text == "SecureBoot = 1")
    assert dict(secure_boot.fields)["vendor"] == str(GLOBAL)
    assert not any(d.kind in {"malformed", "bytes"} for _, _, d in seen)


def test_the_simulated_chains_events() -> None:
    variable = pcr7.uefi_variable_data("SecureBoot", GLOBAL, b"\1")
    assert ed.describe(pcr7.EV_EFI_VARIABLE_DRIVER_CONFIG, variable).text == "SecureBoot = 1"
    sim_path = "\\EFI\\Linux\\bastion+3-0.efi".encode("utf-16-le") + b"\0\0"
    image = ed.describe(pcr_boot.EV_EFI_BOOT_SERVICES_APPLICATION, sim_path)
    assert (image.kind, image.text) == ("image", "\\EFI\\Linux\\bastion+3-0.efi")
    tagged = pcr_boot.pcr9_events("quiet", b"initrd")
    assert ed.describe(tagged[0].event_type, tagged[0].data).text.startswith(
        "LOADED_IMAGE::LoadOptions"
    )
    assert ed.describe(el.EventType.EV_IPL, b"bastion:bootloader\0").text == "bastion:bootloader"
    assert ed.type_name(0x12345678) == "0x12345678"


def _var(name: str, data: bytes, *, chars: int | None = None, size: int | None = None) -> bytes:
    encoded = name.encode("utf-16-le")
    head = struct.pack(
        "<QQ", len(encoded) // 2 if chars is None else chars, len(data) if size is None else size
    )
    return GLOBAL.bytes_le + head + encoded + data


def _image(path_bytes: bytes, size: int | None = None) -> bytes:
    head = struct.pack("<QQQQ", 0x1000, 4096, 0, len(path_bytes) if size is None else size)
    return head + path_bytes


def _node(kind: int, sub: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack("<BBH", kind, sub, 4 + len(body) if length is None else length) + body


END = _node(0x7F, 0xFF, b"")

NEGATIVE = [
    ("variable truncated before its sizes", 0x80000001, GLOBAL.bytes_le + b"\0" * 8),
    ("variable sizes longer than the event", 0x80000001, _var("db", b"x", size=9)),
    ("variable sizes shorter than the event", 0x80000002, _var("db", b"xyz", size=1)),
    ("variable name absurdly long", 0x800000E0, _var("db", b"", chars=1 << 40)),
    ("variable name not UTF-16", 0x80000001, _var("", b"\0\xd8", chars=1, size=0)),
    ("image: odd bytes, no structure", 0x80000003, b"\x41"),
    ("image: device path node too short", 0x80000003, _image(_node(4, 4, b"", length=2))),
    ("image: node longer than the path", 0x80000003, _image(_node(4, 4, b"ab", length=40))),
    ("image: file path odd length", 0x80000003, _image(_node(4, 4, b"abc") + END)),
    ("tag: size disagrees", 0x6, struct.pack("<II", 1, 9) + b"short"),
    ("tag: truncated", 0x6, b"\1\0"),
    ("firmware blob: trailing bytes", 0x80000008, struct.pack("<QQ", 1, 2) + b"!"),
    ("firmware blob: truncated", 0x80000008, b"\0" * 15),
    ("firmware blob2: description past the end", 0x8000000A, b"\xff" + b"x" * 10),
    ("gpt: truncated header", 0x80000006, b"EFI PART"),
    ("gpt: too many entries", 0x80000006, b"\0" * 12 + struct.pack("<I", 92) + b"\0" * 68
     + struct.pack("<I", 128) + b"\0" * 4 + struct.pack("<Q", 100_000)),
]  # fmt: skip


@pytest.mark.parametrize(("why", "event_type", "data"), NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_malformed_structures_are_format_errors(why: str, event_type: int, data: bytes) -> None:
    with pytest.raises(FormatError):
        ed.decode(event_type, data)
    shown = ed.describe(event_type, data)  # never raises: hex and the reason
    assert shown.kind == "malformed"
    assert data[: ed.HEX_MAX].hex() in shown.text


HOSTILE = [
    ("markup", "<script>alert(1)</script>", "<script>alert(1)</script>"),
    ("newline", "a\nb", "a\\u000ab"),
    ("terminal escape", "\x1b[31mred", "\\u001b[31mred"),
    ("bidi override", "abc\u202eexe.txt", "abc\\u202eexe.txt"),
    ("zero width", "ad\u200bmin", "ad\\u200bmin"),
]


@pytest.mark.parametrize(("why", "raw", "shown"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_texts_are_made_inert(why: str, raw: str, shown: str) -> None:
    """Escaping markup is the page's job (autoescape); control and format characters are
    this module's: a device must not break lines or reverse text on the operator's page."""
    data = raw.encode("utf-16-le") + b"\0\0"
    assert ed.describe(el.EventType.EV_IPL, data).text == shown
    assert ed.describe(0x80000003, data).text == shown


def test_long_texts_are_cut() -> None:
    text = ed.describe(el.EventType.EV_EFI_ACTION, b"A" * 5000).text
    assert len(text) == ed.TEXT_MAX and text.endswith("...")
    assert len(ed.describe(0x99, b"\1" * 500).text) == 2 * ed.HEX_MAX + 3
