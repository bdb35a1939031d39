"""The sim UEFI firmware: Secure Boot's db/dbx check of each image it loads, and what
OVMF measures into PCRs 0, 4 and 7.

Decisions only (bytes in, raise on refusal); the chain (device/boot/efi_chain.py)
reads the variables and the ESP through its ``Platform`` and extends the events.

**Variables.** The device's Secure Boot variables are its ``PK``, ``KEK``, ``db`` and
``dbx`` as efivarfs gives them (``Platform.efi_variable``: four attribute bytes, then
the EFI_SIGNATURE_LISTs), burned at ``device create``. Secure Boot is on when a PK is
enrolled (user mode), as UEFI 2.10 32.3 defines ``SecureBoot``.

**LoadImage** (:func:`check_image`), in edk2 DxeImageVerificationLib's order, fail
closed: the image's Authenticode SHA-256 listed in dbx is refused; a signature carrying
a certificate listed in dbx (an X.509 entry byte-identical to it) is refused; then a
signature that verifies and chains to a db certificate
(:func:`bastion.trust.authenticode.verify_pe`) admits the image unless its signer or db
anchor is listed in dbx; failing that, the image's Authenticode SHA-256 listed in db (an
``EFI_CERT_SHA256_GUID`` entry) admits it, signed or not, as edk2 does for an unsigned
image and for one whose signature db does not trust. Nothing else is admitted.
Refusals are :class:`~bastion.errors.SignatureError` naming the
image, what was expected and what was found; the chain prints them as OVMF's
``Access Denied``. With Secure Boot off nothing is checked (nor measured into PCR 7).

**Measurements** (trust/pcr7.py and trust/pcr_boot.py predict exactly these, and
tests/e2e compares both with a real OVMF boot):

* PCR 0: ``EV_S_CRTM_VERSION`` of the sim firmware's version string, then a separator.
  Firmware-specific, like OVMF's own PCR 0 (a known value, never predicted);
* PCR 7: ``EV_EFI_VARIABLE_DRIVER_CONFIG`` for SecureBoot, PK, KEK, db, dbx, a
  separator, then one ``EV_EFI_VARIABLE_AUTHORITY`` per distinct db entry that verified
  an image, a certificate or an image hash (edk2 measures an authority once per boot);
* PCR 4: ``EV_EFI_ACTION`` "Calling EFI Application from Boot Option", a separator,
  then ``EV_EFI_BOOT_SERVICES_APPLICATION`` with each loaded image's Authenticode
  SHA-256 (systemd-boot, then the UKI).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bastion.errors import FormatError, SignatureError, VerificationError
from bastion.formats import eventlog as el
from bastion.formats.efivars import (
    EFI_CERT_SHA256_GUID,
    EFI_CERT_X509_GUID,
    SECURE_BOOT_VARIABLES,
    SignatureData,
    parse_signature_lists,
)
from bastion.formats.pe import PeImage
from bastion.trust import pcr7, pcr_boot
from bastion.trust.authenticode import AuthenticodeSignature, verify_pe
from bastion.trust.image import SIM_FIRMWARE_VERSION

#: what the sim firmware measures as its version into PCR 0 (firmware-specific)
FIRMWARE_VERSION = SIM_FIRMWARE_VERSION
PCR_FIRMWARE = 0
#: the four efivarfs attribute bytes in front of a variable's data
EFIVAR_ATTRIBUTES_SIZE = 4


def efivar_name(name: str) -> str:
    """The efivarfs file name (``Name-VendorGuid``) of a Secure Boot variable."""
    return f"{name}-{SECURE_BOOT_VARIABLES[name]}"


@dataclass(frozen=True, slots=True)
class SecureBootVariables:
    """The firmware's PK, KEK, db, dbx (signature-list bytes; empty when unset)."""

    pk: bytes = b""
    kek: bytes = b""
    db: bytes = b""
    dbx: bytes = b""

    @classmethod
    def from_efivars(cls, read: Callable[[str], bytes | None]) -> SecureBootVariables:
        """From efivarfs contents: ``read("PK-8be4...")`` gives attributes + data or None."""
        values: dict[str, bytes] = {}
        for name in ("PK", "KEK", "db", "dbx"):
            raw = read(efivar_name(name))
            if raw is None:
                values[name] = b""
                continue
            if len(raw) < EFIVAR_ATTRIBUTES_SIZE:
                raise FormatError(f"EFI variable {name} is {len(raw)} bytes: no attributes")
            data = raw[EFIVAR_ATTRIBUTES_SIZE:]
            if data:
                parse_signature_lists(data)  # well-formed, or the firmware refuses to start
            values[name] = data
        return cls(values["PK"], values["KEK"], values["db"], values["dbx"])

    @property
    def secure_boot(self) -> bool:
        """Secure Boot is on in user mode: a PK is enrolled."""
        return bool(self.pk)

    def _entries(self, data: bytes, kind: object) -> list[SignatureData]:
        if not data:
            return []
        return [s for sl in parse_signature_lists(data) if sl.signature_type == kind
                for s in sl.signatures]  # fmt: skip

    def db_certificates(self) -> list[x509.Certificate]:
        """The X.509 certificates in db (entries that do not parse are skipped, as edk2 does)."""
        return pcr7.db_certificates(self.db)

    def db_hash_entry(self, digest: bytes) -> SignatureData | None:
        """The db entry listing the image SHA-256 ``digest``, or None."""
        return pcr7.hash_entry(self.db, digest) if self.db else None

    def dbx_hashes(self) -> set[bytes]:
        """The image SHA-256 digests dbx forbids."""
        return {e.data for e in self._entries(self.dbx, EFI_CERT_SHA256_GUID)}

    def dbx_certificates(self) -> set[bytes]:
        """The certificates (DER) dbx forbids."""
        return {e.data for e in self._entries(self.dbx, EFI_CERT_X509_GUID)}

    def pcr7_state(self) -> pcr7.SecureBootState:
        """What PCR 7 depends on before any image is loaded (no authority yet)."""
        present = {
            n: d for n, d in (("PK", self.pk), ("KEK", self.kek), ("db", self.db),
                              ("dbx", self.dbx)) if d
        }  # fmt: skip
        return pcr7.SecureBootState(self.secure_boot, present)


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """An image LoadImage accepted: its Authenticode SHA-256 and the db entry that
    verified it (None with Secure Boot off)."""

    path: str
    digest: bytes
    authority: SignatureData | None


def _carried_certificates(pe: PeImage) -> list[bytes]:
    """DER of every certificate the image's signatures carry (malformed ones skipped:
    they cannot verify, and edk2 skips them too)."""
    out: list[bytes] = []
    for entry in pe.certificates:
        try:
            out.extend(AuthenticodeSignature.parse(entry.certificate).certificates)
        except FormatError:
            continue
    return out


def check_image(path: str, image: bytes, variables: SecureBootVariables) -> LoadedImage:
    """LoadImage's Secure Boot check of ``image`` (read from ``path``); raises
    SignatureError (or FormatError for what is no PE image) on refusal."""
    try:
        pe = PeImage.parse(image)
        digest = pe.authenticode_digest("sha256")
    except FormatError as exc:
        raise FormatError(f"{path}: not a loadable PE image: {exc}") from exc
    if not variables.secure_boot:
        return LoadedImage(path, digest, None)
    if digest in variables.dbx_hashes():
        raise SignatureError(
            f"{path}: Access Denied: its Authenticode SHA-256 {digest.hex()} is listed in dbx"
        )
    forbidden = variables.dbx_certificates()
    for der in _carried_certificates(pe):
        if der in forbidden:
            subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
            raise SignatureError(
                f"{path}: Access Denied: its signature carries {subject!r}, which is listed in dbx"
            )
    db = variables.db_certificates()
    if not pe.certificates:
        why = "it is not signed"
    elif not db:
        why = "db holds no certificate to verify its signature with"
    else:
        try:
            verified = verify_pe(pe, db)
        except VerificationError as exc:
            names = ", ".join(repr(c.subject.rfc4514_string()) for c in db)
            why = f"{exc} (expected a signature chaining to db: {names})"
        else:
            for what, cert in (("signer", verified.signer), ("db certificate", verified.anchor)):
                if cert.public_bytes(Encoding.DER) in forbidden:
                    raise SignatureError(
                        f"{path}: Access Denied: its {what} {cert.subject.rfc4514_string()!r} "
                        "is listed in dbx"
                    )
            return LoadedImage(path, digest, pcr7.authority_entry(variables.db, verified.signer))
    allowed = variables.db_hash_entry(digest)
    if allowed is not None:
        return LoadedImage(path, digest, allowed)
    raise SignatureError(
        f"{path}: Access Denied: {why}, and its Authenticode SHA-256 {digest.hex()} is not in db"
    )


# --- measurements ------------------------------------------------------------------------


def power_on_events(variables: SecureBootVariables) -> list[el.Event]:
    """What the firmware measures before it starts the boot option: PCR 0, PCR 7's
    variables and separator, PCR 4's "calling" action and separator."""
    return [
        el.measure(PCR_FIRMWARE, el.EventType.EV_S_CRTM_VERSION, FIRMWARE_VERSION),
        *pcr7.events(variables.pcr7_state()),
        el.measure(PCR_FIRMWARE, el.EventType.EV_SEPARATOR, bytes(4)),
        *pcr_boot.pcr4_events_for_digests([]),
    ]


def load_events(image: LoadedImage, measured: set[bytes]) -> list[el.Event]:
    """PCR 4 for a loaded image, and PCR 7 for its authority unless ``measured`` (the
    authorities measured so far this boot, updated here) already holds it."""
    out = [
        el.Event(
            pcr_boot.PCR_BOOT_CODE,
            pcr_boot.EV_EFI_BOOT_SERVICES_APPLICATION,
            ((el.ALG_SHA256, image.digest),),
            image.path.encode("utf-16-le") + b"\0\0",
        )
    ]
    if image.authority is not None:
        key = hashlib.sha256(image.authority.to_bytes()).digest()
        if key not in measured:
            measured.add(key)
            out.append(pcr7.authority_event(image.authority))
    return out
