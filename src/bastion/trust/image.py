"""Image verification and PCR prediction: what a device will check, decided offline.

The decisions over a bastion disk image (formats/image.py), separate from reading it:
an :class:`ImageSource` reads (storage/disk_image.py ``DiskImage`` for an image file),
the functions here verify bytes and raise (SignatureError, FormatError):

* ``verify_image_signature``: the signed statement (image key) over size and SHA-256;
* ``verify_image``: that, plus the boot archive's platform key and bootloader statement,
  each slot's unit statement and sections, its DPS verity signature, the partition
  UUIDs, and (``full``) every root block against the root hash;
* ``predict_pcrs``: the golden PCR values of a boot of one slot, replaying the events
  trust/measure.py defines (the same lists the boot chain extends).

The boot chain (device/boot.py) uses the same statement, key-hash and verity-signature
checks at boot, with the security profile deciding what a failure does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.errors import FormatError, SignatureError
from bastion.formats import bootunit as bu
from bastion.formats import gpt, modsig, strict_json
from bastion.formats.image import (
    IMAGE_PAYLOAD_TYPE,
    PART_BOOT,
    SLOTS,
    parse_archive,
    root_part,
    sig_part,
    verity_data_size,
    verity_part,
)
from bastion.trust import measure
from bastion.trust.envelope import parse_envelope, verify_envelope
from bastion.trust.keys import load_public_key
from bastion.trust.signer import SignatureScheme, Verifier


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
    boot: Verifier
    image: Verifier
    verity_cert: x509.Certificate
    module_cert: x509.Certificate | None = None

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


def verify_verity_signature(sig: bu.VeritySignature, cert: x509.Certificate) -> bytes:
    """Check the PKCS#7 over the hex root hash with ``cert``; returns the root hash."""
    cms = modsig.CmsSignature.parse(sig.signature)
    if cms.issuer != cert.issuer.public_bytes() or cms.serial != cert.serial_number:
        raise SignatureError("verity signature was made by another certificate")
    fpr = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    if sig.certificate_fingerprint and sig.certificate_fingerprint != fpr:
        raise SignatureError("verity signature names another certificate fingerprint")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("verity certificate does not hold an RSA key")
    try:
        Verifier.of(key, SignatureScheme.RSA_PKCS1V15_SHA256).verify(
            sig.root_hash.hex().encode(), cms.signature
        )
    except SignatureError as exc:
        raise SignatureError(f"verity root hash signature does not verify: {exc}") from exc
    return sig.root_hash


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


def verify_slot(
    source: ImageSource,
    layout: gpt.GptDisk,
    archive: bu.Container,
    slot: str,
    *,
    boot: Verifier,
    verity_cert: x509.Certificate,
    full: bool,
) -> dict[str, Any]:
    """Offline checks of one slot: unit statement and sections, verity signature, UUIDs,
    and (``full``) every root block against the root hash."""
    raw = archive.get(f"unit.{slot}")
    doc = open_statement(archive.get(f"unit.{slot}.sig"), bu.STATEMENT_TYPE_UNIT, boot)
    unit = bu.parse_unit(raw)
    container = bu.parse(raw, bu.Kind.UNIT)
    signed = doc.get("sections", {})
    for name, digest in bu.section_digests(container.entries).items():
        if signed.get(name) != digest:
            raise SignatureError(f"slot {slot}: section {name} does not match its signed digest")
    if doc.get("sha256") != hashlib.sha256(raw).hexdigest() or doc.get("slot") != slot:
        raise SignatureError(f"slot {slot}: boot unit does not match its signed statement")
    root_hash = bytes.fromhex(unit.cmdline_params().get("roothash", ""))
    data_size = verity_data_size(unit)
    sig = bu.parse_verity_signature(source.read_partition(sig_part(slot)))
    if verify_verity_signature(sig, verity_cert) != root_hash:
        raise SignatureError(f"slot {slot}: signed root hash differs from the command line's")
    root, verity = layout.find(root_part(slot)), layout.find(verity_part(slot))
    if (root.part_guid, verity.part_guid) != gpt.verity_partition_uuids(root_hash):
        raise SignatureError(f"slot {slot}: partition UUIDs do not derive from the root hash")
    if full:
        source.verify_root(root.name, verity.name, root_hash, data_size)
    return {
        "version": doc.get("version"),
        "security_version": unit.security_version,
        "root_hash": root_hash.hex(),
        "root_verified": full,
    }


def verify_loader(archive: bu.Container, trust: ImageTrust) -> Verifier:
    """The boot archive's platform key and bootloader statement; the loader's boot key."""
    if platform_key_hash(archive.get("loader.key")) != trust.platform_root_hash:
        raise SignatureError("boot partition carries another platform key")
    loader = archive.get("loader")
    doc = open_statement(archive.get("loader.sig"), bu.STATEMENT_TYPE_LOADER, trust.platform_root)
    if doc != json.loads(bu.loader_statement(loader)):
        raise SignatureError("bootloader does not match its signed statement")
    stage = bu.parse_loader(loader)
    boot = Verifier.of(load_public_key(stage.boot_key))
    if boot.key_id != trust.boot.key_id:
        raise SignatureError("bootloader trusts another boot key than the product's")
    return boot


def verify_image(
    source: SignedImageSource, trust: ImageTrust, *, full: bool = True
) -> dict[str, Any]:
    """Everything a device will check, offline: image signature, loader, units, verity."""
    meta = verify_image_signature(source, trust)
    layout = source.layout()
    archive = parse_archive(source.read_partition(PART_BOOT))
    boot = verify_loader(archive, trust)
    slots = {}
    for slot in SLOTS:
        if f"unit.{slot}" in archive.names():
            slots[slot] = verify_slot(
                source, layout, archive, slot, boot=boot, verity_cert=trust.verity_cert, full=full
            )
    return dict(meta, slots=slots)


def predict_archive_pcrs(archive: bu.Container, slot: str = "a") -> dict[int, bytes]:
    """The golden PCRs of booting ``slot`` of a boot archive (pure replay)."""
    unit = bu.parse_unit(archive.get(f"unit.{slot}"))
    root_hash = bytes.fromhex(unit.cmdline_params().get("roothash", ""))
    events = measure.boot_events(
        platform_key_hash(archive.get("loader.key")),
        archive.get("loader"),
        unit.sections(),
        root_hash,
    )
    return measure.predict(events)


def predict_pcrs(source: ImageSource, slot: str = "a") -> dict[int, bytes]:
    """The PCRs (sha256) a device has after booting ``slot`` of this image: golden values.

    A pure replay of what each stage measures (trust/measure.py), read from the image.
    """
    return predict_archive_pcrs(parse_archive(source.read_partition(PART_BOOT)), slot)
