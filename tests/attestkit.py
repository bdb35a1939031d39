"""Shared by the attestation tests: the event log of an EFI boot, golden values of it, and
extending it into a TPM.

The events are the sim EFI chain's own (device/boot/firmware.py, device/boot/stub.py,
in the order device/boot/efi_chain.py extends them): the firmware's PCR 0 version, PCR 7
Secure Boot variables and separators, PCR 4's "calling" action; signed systemd-boot
loaded (PCR 4 its Authenticode digest, PCR 7 its db authority); the UKI loaded (PCR 4);
systemd-stub's PCR 11 sections; the Linux stub's PCR 9 command line and initrd. Only
the two PCR 4 image digests stand for images that are not built here (the SHA-256 of
the loader's name and of the UKI's sections). ``SEL`` is the fleet default selection
(0, 4, 7, 9, 11). A real boot's evidence is tests/integration/test_attestation_boot.py's
(sim) and tests/vectors/boot/eventlog.bin (OVMF under QEMU).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from bastion.device.boot import firmware as fw
from bastion.device.boot import stub
from bastion.formats import eventlog as el
from bastion.formats.efivars import SignatureData, SignatureList, encode_signature_lists
from bastion.tpm.base import PcrSelection, Tpm
from bastion.trust import pcr_boot
from bastion.trust.verdict import GoldenValues, components_of

SEL = PcrSelection.parse("sha256:0,4,7,9,11")  # server attestation DEFAULT_SELECTION
OWNER = uuid.UUID("0b457100-0000-4000-8000-0000000000a7")
LOADER_PATH = "\\EFI\\BOOT\\BOOTX64.EFI"
UKI_PATH = "\\EFI\\Linux\\bastion-1-a+2-1.efi"
ROOT_HASH = "ab" * 32


@functools.cache
def secure_boot() -> tuple[fw.SecureBootVariables, SignatureData]:
    """PK, KEK and db each one test certificate (dbx empty), and db's entry for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attestkit db")])
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(when).not_valid_after(when + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    der = cert.public_bytes(Encoding.DER)
    lists = encode_signature_lists([SignatureList.x509(OWNER, der)])
    return fw.SecureBootVariables(pk=lists, kek=lists, db=lists), SignatureData(OWNER, der)


def uki_sections(kernel: bytes = b"kernel v1", svn: int = 3) -> dict[str, bytes]:
    """The measured sections of a small UKI (as build/efi_image.py lays them out)."""
    return {
        ".linux": kernel,
        ".osrel": f'ID=bastion\nVERSION_ID="1.0"\nBASTION_SECURITY_VERSION={svn}\n'.encode(),
        ".cmdline": f"quiet roothash={ROOT_HASH}".encode() + b"\0",
        ".initrd": b"initrd",
        ".pcrpkey": b"-----BEGIN PUBLIC KEY-----\nattestkit\n-----END PUBLIC KEY-----\n",
    }


def boot_events(kernel: bytes = b"kernel v1", svn: int = 3) -> list[el.Event]:
    """The firmware event log of a sim EFI boot of a UKI with this kernel and SVN."""
    variables, authority = secure_boot()
    sections = uki_sections(kernel, svn)
    uki_digest = hashlib.sha256(b"".join(k.encode() + v for k, v in sections.items())).digest()
    loader = fw.LoadedImage(LOADER_PATH, hashlib.sha256(b"systemd-boot 252").digest(), authority)
    uki = fw.LoadedImage(UKI_PATH, uki_digest, authority)
    measured: set[bytes] = set()
    handoff = stub.KernelHandoff(
        sections, pcr_boot.stub_cmdline(sections), pcr_boot.stub_initrd(sections)
    )
    return [
        *fw.power_on_events(variables),
        *fw.load_events(loader, measured),  # firmware: systemd-boot
        *fw.load_events(uki, measured),  # systemd-boot: the UKI (same authority: not again)
        *stub.stub_events(sections),
        *stub.kernel_events(handoff),
    ]


def golden_of(events: list[el.Event], svn: int = 3, version: str = "1.0") -> GoldenValues:
    """The golden values a build would sign for a boot recording ``events``."""
    pcrs = el.replay(events)
    comps, _ = components_of(events)
    return GoldenValues(version, "ab" * 32, svn, {i: pcrs[i] for i in SEL.indexes}, comps)


def extend(tpm: Tpm, events: list[el.Event]) -> bytes:
    """Measure ``events`` into ``tpm``; the serialised event log."""
    for ev in events:
        tpm.pcr_extend(ev.pcr, {SEL.bank: ev.digest(el.ALG_SHA256)})
    return el.EventLog(el.SpecIdEvent(), tuple(events)).to_bytes()
