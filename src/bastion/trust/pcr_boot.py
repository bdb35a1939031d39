"""PCR 4 and PCR 9 prediction for OVMF + signed systemd-boot + a systemd-stub 252 UKI.

What a real boot measured (OVMF 2022.11, systemd-boot/stub 252, Linux 6.1, Secure Boot
on; the log is ``tests/vectors/boot/eventlog.bin``), sha256 bank:

PCR 4 (boot manager code), by edk2's Tcg2Dxe:

1. ``EV_EFI_ACTION`` "Calling EFI Application from Boot Option" (digest of that ASCII
   text, no NUL) when the boot manager starts the boot option;
2. ``EV_SEPARATOR`` (four zero bytes);
3. ``EV_EFI_BOOT_SERVICES_APPLICATION`` per PE image the firmware's ``LoadImage``
   accepted, its digest the image's Authenticode SHA-256: systemd-boot (BOOTX64.EFI),
   then the UKI systemd-boot loads. The kernel inside the UKI is *not* measured again:
   stub 252 hands it over without a second firmware-measured ``LoadImage``.

PCR 9, by the Linux 6.1 EFI stub, two ``EV_EVENT_TAG`` events:

1. tag ``0x8F3B22ED`` "LOADED_IMAGE::LoadOptions": the digest of the command line as
   UTF-16LE with its NUL (systemd-stub widens the ``.cmdline`` section byte by byte);
2. tag ``0x8F3B22EC`` "Linux initrd": the digest of the initrd systemd-stub handed over,
   which is ``.initrd`` padded to 4 bytes followed by one cpio archive each for
   ``.pcrsig`` (``.extra/tpm2-pcr-signature.json``) and ``.pcrpkey``
   (``.extra/tpm2-pcr-public-key.pem``) when the UKI has them. (No credentials or
   system extensions on the ESP: bastion images write none.)

Pure: bytes in, events and digests out. Event data the firmware fills with load
addresses and device paths is not predicted (it is not hashed); only digests are.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence

from bastion.errors import FormatError
from bastion.formats import eventlog as el
from bastion.formats.pe import PeImage
from bastion.formats.uki import uki_sections

PCR_BOOT_CODE = 4
PCR_KERNEL_CONFIG = 9
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
#: the Linux EFI stub's tagged-event ids (drivers/firmware/efi/libstub)
TAG_LOAD_OPTIONS = 0x8F3B22ED
TAG_INITRD = 0x8F3B22EC
_CPIO_TRAILER = (
    b"070701" + b"00000000" * 4 + b"00000001" + b"00000000" * 6 + b"0000000B" + b"00000000"
)


def _sha256_event(pcr: int, event_type: int, digest: bytes, data: bytes) -> el.Event:
    return el.Event(pcr, event_type, ((el.ALG_SHA256, digest),), data)


def pcr4_events(images: Sequence[bytes]) -> list[el.Event]:
    """The PCR 4 events of a boot that loads ``images`` (PE files), in order."""
    return pcr4_events_for_digests(
        [PeImage.parse(image).authenticode_digest("sha256") for image in images]
    )


def pcr4_events_for_digests(digests: Sequence[bytes]) -> list[el.Event]:
    """The PCR 4 events for images with these Authenticode SHA-256 digests, in order."""
    out = [
        el.measure(PCR_BOOT_CODE, el.EventType.EV_EFI_ACTION, CALLING_EFI_APPLICATION),
        el.measure(PCR_BOOT_CODE, el.EventType.EV_SEPARATOR, bytes(4)),
    ]
    for digest in digests:
        if len(digest) != 32:
            raise FormatError(f"an Authenticode SHA-256 digest has 32 bytes, not {len(digest)}")
        out.append(_sha256_event(PCR_BOOT_CODE, EV_EFI_BOOT_SERVICES_APPLICATION, digest, b""))
    return out


def predict_pcr4(images: Sequence[bytes]) -> bytes:
    """The sha256 PCR 4 after the firmware loaded ``images`` (systemd-boot, then the UKI)."""
    return el.replay(pcr4_events(images))[PCR_BOOT_CODE]


def _tagged(tag: int, description: bytes) -> bytes:
    return struct.pack("<II", tag, len(description)) + description


def pcr9_events(cmdline: str, initrd: bytes) -> list[el.Event]:
    """The Linux EFI stub's PCR 9 events for ``cmdline`` (without NUL) and ``initrd``."""
    return pcr9_events_for_digest(cmdline, hashlib.sha256(initrd).digest())


def pcr9_events_for_digest(cmdline: str, initrd_sha256: bytes) -> list[el.Event]:
    """:func:`pcr9_events` for an initrd known by its SHA-256 digest."""
    if "\0" in cmdline:
        raise FormatError("the command line holds a NUL")
    if len(initrd_sha256) != 32:
        raise FormatError(f"an initrd SHA-256 digest has 32 bytes, not {len(initrd_sha256)}")
    options = (cmdline + "\0").encode("utf-16-le")
    return [
        el.measure(
            PCR_KERNEL_CONFIG,
            el.EventType.EV_EVENT_TAG,
            _tagged(TAG_LOAD_OPTIONS, b"LOADED_IMAGE::LoadOptions\0"),
            options,
        ),
        _sha256_event(
            PCR_KERNEL_CONFIG,
            el.EventType.EV_EVENT_TAG,
            initrd_sha256,
            _tagged(TAG_INITRD, b"Linux initrd\0"),
        ),
    ]


def predict_pcr9(cmdline: str, initrd: bytes) -> bytes:
    """The sha256 PCR 9 after the kernel's EFI stub measured ``cmdline`` and ``initrd``."""
    return el.replay(pcr9_events(cmdline, initrd))[PCR_KERNEL_CONFIG]


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _cpio_header(ino: int, mode: int, size: int, name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    return b"070701" + b"".join(b"%08x" % value for value in fields)


def stub_cpio(directory: str, name: str, data: bytes) -> bytes:
    """One archive as systemd-stub 252 packs a section for the initrd: the directory
    (0555), the file (0444), the trailer; lower-case hex, inodes from 1, mtime 0."""
    prefix = directory.encode("ascii")
    path = prefix + b"/" + name.encode("ascii")
    out = _pad4(_cpio_header(1, 0o40555, 0, prefix) + prefix + b"\0")
    out += _pad4(_cpio_header(2, 0o100444, len(data), path) + path + b"\0")
    return out + _pad4(data) + _pad4(_CPIO_TRAILER + b"TRAILER!!!\0")


def stub_initrd(sections: Mapping[str, bytes]) -> bytes:
    """The initrd systemd-stub 252 hands the kernel for a UKI with ``sections``."""
    out = _pad4(sections.get(".initrd", b""))
    if ".pcrsig" in sections:
        out += stub_cpio(".extra", "tpm2-pcr-signature.json", sections[".pcrsig"])
    if ".pcrpkey" in sections:
        out += stub_cpio(".extra", "tpm2-pcr-public-key.pem", sections[".pcrpkey"])
    return out


def stub_cmdline(sections: Mapping[str, bytes]) -> str:
    """The command line the stub passes: ``.cmdline`` up to its first NUL, ASCII only
    (stub 252 widens bytes to UTF-16 one by one; anything else would be mispredicted)."""
    if ".cmdline" not in sections:
        raise FormatError("the UKI has no .cmdline: its PCR 9 is not predicted")
    raw = sections[".cmdline"].split(b"\0", 1)[0]
    if not raw.isascii():
        raise FormatError("the UKI's .cmdline is not ASCII: its PCR 9 is not predicted")
    return raw.decode("ascii")


def predict_boot(loader: bytes, uki: bytes) -> dict[int, bytes]:
    """PCR 4 and 9 of a boot of ``uki`` by ``loader`` (signed systemd-boot)."""
    sections = uki_sections(uki)
    return {
        PCR_BOOT_CODE: predict_pcr4([loader, uki]),
        PCR_KERNEL_CONFIG: predict_pcr9(stub_cmdline(sections), stub_initrd(sections)),
    }
