"""Image verification and PCR prediction: what a device will check, decided offline.

The decisions over a bastion disk image (build/efi_image.py, ADR 0027), separate from
reading it: an :class:`ImageSource` reads (storage/disk_image.py ``DiskImage`` for an
image file), the functions here verify bytes and raise (SignatureError, FormatError):

* ``verify_image_signature``: the signed statement (image key) over size and SHA-256;
* ``verify_efi_boot_files``: systemd-boot and each UKI against db, each ``.pcrsig``;
* ``verify_efi_root``: every root block against the UKI's ``roothash=``;
* ``predict_efi_pcrs``: the golden PCRs 0 (sim firmware), 4, 7, 9 and 11 of a boot.

The sim chain (device/boot/) uses the same key-hash check at boot, with the security
profile deciding what a failure does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.errors import FormatError, SignatureError
from bastion.formats import gpt, strict_json
from bastion.formats.image import IMAGE_PAYLOAD_TYPE
from bastion.trust.envelope import parse_envelope, verify_envelope
from bastion.trust.signer import Verifier


class ImageSource(Protocol):
    """Where an image's bytes come from (an image file, or a device's disk)."""

    def layout(self) -> gpt.GptDisk:
        """The disk's GPT."""
        ...

    def read_partition(self, name: str, limit: int | None = None) -> bytes:
        """The bytes of partition ``name`` (the first ``limit`` bytes when given)."""
        ...

    def verify_root(self, root: str, verity: str, root_hash: bytes, data_size: int) -> None:
        """Check every block of partition ``root`` against ``root_hash`` (raises)."""
        ...


class SignedImageSource(ImageSource, Protocol):
    """An image file with its detached signature (``disk.img.sig``)."""

    @property
    def signature_path(self) -> object:
        """Where the signature is expected (named in errors)."""
        ...

    def read_signature(self) -> bytes | None:
        """The signature's bytes, or None when there is none."""
        ...

    def size(self) -> int:
        """The image's size in bytes."""
        ...

    def sha256(self) -> bytes:
        """SHA-256 of the whole image."""
        ...


@dataclass(frozen=True)
class ImageTrust:
    """The public side: what verifies an image (and what a device trusts)."""

    platform_root: Verifier
    image: Verifier

    @property
    def platform_root_hash(self) -> bytes:
        """SHA-256 of the platform root key's SubjectPublicKeyInfo: what is fused."""
        return bytes.fromhex(self.platform_root.key_id)


def open_statement(data: bytes, payload_type: str, verifier: Verifier) -> dict[str, Any]:
    """Verify a signed statement envelope and return its JSON (SignatureError/FormatError)."""
    payload = verify_envelope(parse_envelope(data), [verifier], payload_type=payload_type)
    return strict_json.loads_object(payload, what="signed statement")


def platform_key_hash(pem: bytes) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo of a PEM public key (the fused value)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise FormatError(f"platform key is not a PEM public key: {exc}") from exc
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def check_image_statement(
    signature: bytes, trust: ImageTrust, *, size: int, sha256: bytes
) -> dict[str, Any]:
    """Check the image statement against the image key, size and digest; its metadata."""
    doc = open_statement(signature, IMAGE_PAYLOAD_TYPE, trust.image)
    return _check_digest(doc, size, sha256)


def _check_digest(doc: dict[str, Any], size: int, sha256: bytes) -> dict[str, Any]:
    if doc.get("size") != size:
        raise SignatureError(f"image is {size} bytes, the signature says {doc.get('size')}")
    actual = sha256.hex()
    if doc.get("sha256") != actual:
        raise SignatureError(f"image SHA-256 is {actual}, the signature says {doc.get('sha256')}")
    return doc


def verify_image_signature(source: SignedImageSource, trust: ImageTrust) -> dict[str, Any]:
    """Check ``disk.img.sig`` against the image key and the image bytes; returns metadata."""
    signature = source.read_signature()
    if signature is None:
        raise SignatureError(f"image signature {source.signature_path} is missing")
    # the signature and the size are checked before the (long) hash of the image
    doc = open_statement(signature, IMAGE_PAYLOAD_TYPE, trust.image)
    size = source.size()
    if doc.get("size") != size:  # before the (long) hash
        raise SignatureError(f"image is {size} bytes, the signature says {doc.get('size')}")
    return _check_digest(doc, size, source.sha256())


# --- the EFI image (ESP + UKIs + verity; build/efi_image.py, ADR 0027) ---------------------

#: what the sim firmware measures into PCR 0 (EV_S_CRTM_VERSION): firmware-specific, as
#: OVMF's or a board's PCR 0 is; predicted here for sim devices only
SIM_FIRMWARE_VERSION = b"bastion sim UEFI firmware 2\0"
#: the systemd-pcrphase words a booted device has measured into PCR 11 once running
RUNNING_PHASES = "enter-initrd:leave-initrd"


def predict_efi_pcrs(
    loader: bytes,
    uki: bytes,
    variables: dict[str, bytes],
    *,
    phases: str = RUNNING_PHASES,
) -> dict[int, bytes]:
    """PCRs 0 (sim firmware), 4, 7, 9 and 11 (after ``phases``) of a sim boot of ``uki``
    by ``loader`` with Secure Boot ``variables`` (PK/KEK/db/dbx signature lists; a PK
    means Secure Boot on); PCR 7's authorities are the db entries that admit ``loader``
    and ``uki`` (a certificate, or an image hash: :func:`bastion.trust.pcr7.admitting_entry`)."""
    from bastion.formats import eventlog as el
    from bastion.formats.uki import uki_sections
    from bastion.trust import pcr7, pcr11, pcr_boot

    state = pcr7.state_for_images(variables, (loader, uki))
    rom = [
        el.measure(0, el.EventType.EV_S_CRTM_VERSION, SIM_FIRMWARE_VERSION),
        el.measure(0, el.EventType.EV_SEPARATOR, bytes(4)),
    ]
    return {
        0: el.replay(rom)[0],
        **pcr_boot.predict_boot(loader, uki),
        pcr7.PCR_SECURE_BOOT: pcr7.predict(state),
        pcr11.PCR_KERNEL_IMAGE: pcr11.predict_pcr11(uki_sections(uki), phases),
    }


def verify_efi_boot_files(
    loader: bytes,
    ukis: dict[str, bytes],
    db: list[x509.Certificate],
    pcr_key: rsa.RSAPublicKey,
) -> dict[str, Any]:
    """Offline: systemd-boot and each UKI verify against ``db`` (Authenticode), each
    UKI's ``.pcrsig`` verifies with ``pcr_key``; returns each UKI's root hash and
    os-release fields. Raises SignatureError / FormatError."""
    from bastion.formats.uki import uki_sections
    from bastion.trust.authenticode import verify_pe
    from bastion.trust.pcr11 import verify_pcrsig

    verify_pe(loader, db)
    entries: dict[str, Any] = {}
    for name, uki in sorted(ukis.items()):
        try:
            verify_pe(uki, db)
            sections = uki_sections(uki)
            phases = verify_pcrsig(sections, pcr_key, ("enter-initrd", RUNNING_PHASES))
        except (SignatureError, FormatError) as exc:
            raise type(exc)(f"{name}: {exc}") from exc
        words = dict(
            w.partition("=")[::2]
            for w in sections.get(".cmdline", b"").split(b"\0", 1)[0].decode("ascii").split()
        )
        osrel = {}
        for line in sections.get(".osrel", b"").decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                osrel[key.strip()] = value.strip().strip('"')
        entries[name] = {
            "root_hash": words.get("roothash"),
            "version": osrel.get("VERSION_ID"),
            "security_version": int(osrel.get("BASTION_SECURITY_VERSION", "0") or 0),
            "pcrsig_phases": phases,
        }
    return entries


def verify_efi_root(source: ImageSource, layout: gpt.GptDisk, root_hash: bytes) -> str:
    """The root named by ``root_hash`` (partitions by PARTUUID) verified in full; its name."""
    from bastion.formats.verity import VeritySuperblock

    want_root, want_verity = gpt.verity_partition_uuids(root_hash)
    parts = {p.part_guid: p for p in layout.partitions}
    root, verity = parts.get(want_root), parts.get(want_verity)
    if root is None or verity is None:
        raise SignatureError(
            f"no root/verity partitions with the PARTUUIDs of root hash {root_hash.hex()[:16]}..."
        )
    params = VeritySuperblock.parse(source.read_partition(verity.name, 512)).params
    source.verify_root(
        root.name, verity.name, root_hash, params.data_blocks * params.data_block_size
    )
    return root.name
