"""PCR 7 prediction for UEFI Secure Boot with the product's own keys, as OVMF measures it.

edk2's Tcg2Dxe (OVMF 2022.11 in Debian 12) measures into PCR 7, sha256 bank:

1. ``EV_EFI_VARIABLE_DRIVER_CONFIG`` for ``SecureBoot``, ``PK``, ``KEK``, ``db``,
   ``dbx``, in this order, each a ``UEFI_VARIABLE_DATA`` (below) whose digest is the
   SHA-256 of the whole structure. A missing variable is measured with no data.
2. ``EV_SEPARATOR`` (four zero bytes) when the platform is ready to boot.
3. ``EV_EFI_VARIABLE_AUTHORITY`` for the db entry that admitted each image it loads
   (systemd-boot, then the UKI systemd-boot loads through the firmware), each distinct
   entry once per boot: ``UEFI_VARIABLE_DATA`` with name ``db``, the image-security-
   database GUID, and the matching EFI_SIGNATURE_DATA (owner GUID + certificate DER, or
   owner GUID + image SHA-256 for an image db admits by its hash) as its data. edk2 tries
   the certificates first, then the hashes (:func:`admitting_entry`). With Secure Boot
   off there is no authority event.

``UEFI_VARIABLE_DATA`` (TCG PC Client PFP 1.05, 10.2.6): VariableName GUID (the vendor
GUID), u64 UnicodeNameLength (characters), u64 VariableDataLength, the name in UTF-16LE
without NUL, then the data.

Pure: bytes in, events and digests out. This is a prediction from the specification
and edk2's sources; the event log of a real boot (OVMF under QEMU with swtpm, or a
board) is the final proof, and ``pcr7.mismatch`` attestation failures would show a
firmware that measures otherwise (some add ``dbt``/``dbr``, or measure a shim).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from bastion.errors import FormatError, VerificationError
from bastion.formats import eventlog as el
from bastion.formats.efivars import (
    EFI_CERT_SHA256_GUID,
    EFI_CERT_X509_GUID,
    EFI_GLOBAL_VARIABLE,
    EFI_IMAGE_SECURITY_DATABASE,
    SignatureData,
    encode_variable_name,
    guid_bytes,
    parse_signature_lists,
)

PCR_SECURE_BOOT = 7
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
#: the configuration variables OVMF measures, in order, with their vendor GUIDs
MEASURED_VARIABLES: tuple[tuple[str, uuid.UUID], ...] = (
    ("SecureBoot", EFI_GLOBAL_VARIABLE),
    ("PK", EFI_GLOBAL_VARIABLE),
    ("KEK", EFI_GLOBAL_VARIABLE),
    ("db", EFI_IMAGE_SECURITY_DATABASE),
    ("dbx", EFI_IMAGE_SECURITY_DATABASE),
)


def uefi_variable_data(name: str, vendor: uuid.UUID, data: bytes) -> bytes:
    """The UEFI_VARIABLE_DATA structure for one variable."""
    encoded = encode_variable_name(name)
    return guid_bytes(vendor) + struct.pack("<QQ", len(encoded) // 2, len(data)) + encoded + data


def authority_entry(db: bytes, signer: x509.Certificate) -> SignatureData:
    """The db entry that verifies an image signed by ``signer``: the first X.509 entry
    that is ``signer`` itself or directly issued it (edk2 walks db in order)."""
    signer_der = signer.public_bytes(Encoding.DER)
    for sl in parse_signature_lists(db):
        if sl.signature_type != EFI_CERT_X509_GUID:
            continue
        for entry in sl.signatures:
            if entry.data == signer_der:
                return entry
            try:
                anchor = x509.load_der_x509_certificate(entry.data)
                signer.verify_directly_issued_by(anchor)
            except (
                ValueError,
                TypeError,
                x509.InvalidVersion,
                x509.DuplicateExtension,
                InvalidSignature,
            ):
                continue
            return entry
    raise VerificationError(
        f"no db certificate verifies images signed by {signer.subject.rfc4514_string()!r}"
    )


def hash_entry(db: bytes, digest: bytes) -> SignatureData | None:
    """The first db entry of type EFI_CERT_SHA256_GUID equal to the image's Authenticode
    SHA-256 ``digest`` (what edk2 measures as the authority of an image db admits by its
    hash), or None."""
    for sl in parse_signature_lists(db):
        if sl.signature_type != EFI_CERT_SHA256_GUID:
            continue
        for entry in sl.signatures:
            if entry.data == digest:
                return entry
    return None


@dataclass(frozen=True, slots=True)
class SecureBootState:
    """What PCR 7 depends on: the Secure Boot flag and the data of PK, KEK, db, dbx."""

    secure_boot: bool
    variables: Mapping[str, bytes]  # PK, KEK, db, dbx (absent = not set)
    #: the db entries that admitted the boot images, in load order (repeats measured once)
    authorities: tuple[SignatureData, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.variables) - {"PK", "KEK", "db", "dbx"}
        if unknown:
            raise FormatError(f"PCR 7 state names unknown variables {sorted(unknown)}")
        if self.authorities and not self.secure_boot:
            raise FormatError("an authority event exists only with Secure Boot on")


def events(state: SecureBootState) -> list[el.Event]:
    """The PCR 7 events of one boot, in order, sha256 bank."""
    out = []
    for name, vendor in MEASURED_VARIABLES:
        if name == "SecureBoot":
            data = b"\x01" if state.secure_boot else b"\x00"
        else:
            data = state.variables.get(name, b"")
        blob = uefi_variable_data(name, vendor, data)
        out.append(el.measure(PCR_SECURE_BOOT, EV_EFI_VARIABLE_DRIVER_CONFIG, blob))
    out.append(el.measure(PCR_SECURE_BOOT, el.EventType.EV_SEPARATOR, bytes(4)))
    measured: set[bytes] = set()
    for entry in state.authorities:
        if entry.to_bytes() not in measured:
            measured.add(entry.to_bytes())
            out.append(authority_event(entry))
    return out


def authority_event(entry: SignatureData) -> el.Event:
    """PCR 7: the db entry that admitted an image (EV_EFI_VARIABLE_AUTHORITY)."""
    blob = uefi_variable_data("db", EFI_IMAGE_SECURITY_DATABASE, entry.to_bytes())
    return el.measure(PCR_SECURE_BOOT, EV_EFI_VARIABLE_AUTHORITY, blob)


def db_certificates(db: bytes) -> list[x509.Certificate]:
    """The X.509 certificates in ``db`` (entries that do not parse are skipped, as edk2
    does)."""
    out = []
    for sl in parse_signature_lists(db) if db else []:
        if sl.signature_type != EFI_CERT_X509_GUID:
            continue
        for entry in sl.signatures:
            try:
                out.append(x509.load_der_x509_certificate(entry.data))
            except ValueError:
                continue
    return out


def admitting_entry(db: bytes, image: bytes) -> SignatureData:
    """The db entry that admits the PE ``image`` as edk2 decides: the certificate its
    Authenticode signature chains to (:func:`authority_entry` of the signer), else the
    entry listing its Authenticode SHA-256 (:func:`hash_entry`). dbx is not consulted
    (a prediction is for an image the device boots). VerificationError when db admits
    neither."""
    from bastion.formats.pe import PeImage
    from bastion.trust.authenticode import verify_pe

    pe = PeImage.parse(image)
    try:
        verified = verify_pe(pe, db_certificates(db))
    except VerificationError as exc:
        digest = pe.authenticode_digest()
        entry = hash_entry(db, digest) if db else None
        if entry is None:
            raise VerificationError(
                f"db admits this image neither by certificate ({exc}) nor by its "
                f"Authenticode SHA-256 {digest.hex()}"
            ) from exc
        return entry
    return authority_entry(db, verified.signer)


def predict(state: SecureBootState) -> bytes:
    """The expected sha256 PCR 7 value after the boot image was verified."""
    return el.replay(events(state))[PCR_SECURE_BOOT]


def state_for_boot(
    *,
    pk: bytes,
    kek: bytes,
    db: bytes,
    dbx: bytes,
    secure_boot: bool = True,
    boot_signer: x509.Certificate | None = None,
) -> SecureBootState:
    """The PCR 7 state of a boot of an image signed by ``boot_signer`` (None: no authority)."""
    authority = (authority_entry(db, boot_signer),) if boot_signer and secure_boot else ()
    variables = {n: d for n, d in (("PK", pk), ("KEK", kek), ("db", db), ("dbx", dbx)) if d}
    return SecureBootState(secure_boot, variables, authority)


def state_for_images(variables: Mapping[str, bytes], images: Sequence[bytes]) -> SecureBootState:
    """The PCR 7 state of a boot that loads ``images`` (PE files, in order) under the
    Secure Boot ``variables`` (PK/KEK/db/dbx signature lists; a PK means Secure Boot on):
    each image's authority is the db entry that admits it (:func:`admitting_entry`)."""
    secure_boot = bool(variables.get("PK"))
    present = {n: d for n, d in variables.items() if d}
    db = variables.get("db", b"")
    authorities = tuple(admitting_entry(db, i) for i in images) if secure_boot else ()
    return SecureBootState(secure_boot, present, authorities)
