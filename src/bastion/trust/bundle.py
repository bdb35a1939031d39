"""Sign and verify RAUC-compatible ``verity`` bundles (docs/updates.md, ADR 0026).

Signing (:func:`sign_manifest`): a CMS SignedData (RFC 5652) with the manifest as its
*inline* ``data`` content, as RAUC's ``cms_sign`` writes it with OpenSSL's ``CMS_sign``
(``CMS_BINARY | CMS_NOSMIMECAP``): digest SHA-256/384, signed attributes contentType,
signingTime and messageDigest, the signer's certificate (and any chain) carried, one
SignerInfo identified by issuer and serial number. The key stays behind a
:class:`~bastion.trust.signer.Signer` (keys by URI).

Verification (:func:`verify_bundle`), fail closed, in RAUC's order: the 8-byte trailer
and signature bounds; the CMS (exactly one signer, inline ``data`` content, the
messageDigest over the content, the signature over the signed attributes, the signer's
certificate chaining to a keyring certificate, every certificate on the way valid at
``now``); the signed manifest (format ``verity`` with hash, salt and size); then the
dm-verity tree over the payload, recomputed block by block and compared with both the
stored tree and the signed root hash. A bad signature raises
:class:`~bastion.errors.SignatureError`; a payload or tree block that does not match
raises :class:`~bastion.errors.DigestMismatchError` naming the block.

:func:`bundle_golden` reads back the golden-values statement a verified bundle carries
(``[meta.bastion-golden]``, ADR 0037): inside the payload the verity tree just covered,
and equal to the SHA-256 the signed manifest names. Opening it (the product key's
signature, its version and SVN) is :func:`bastion.trust.golden.open_release_golden`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from asn1crypto import cms, core
from asn1crypto import x509 as ax509
from cryptography import x509

from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    SignatureError,
)
from bastion.formats import verity
from bastion.formats.bundle import TRAILER_SIZE, parse_trailer, split_verity
from bastion.formats.raucm import FORMAT_VERITY, Manifest, golden_ref, parse_manifest
from bastion.limits import (
    BUNDLE_BLOCK_SIZE,
    BUNDLE_MAX_CERTIFICATES,
    BUNDLE_SIGNATURE_MAX_SIZE,
)
from bastion.trust.cms import (
    SIGNATURE_ALGORITHM_HASH,
    SIGNATURE_ALGORITHM_NAMES,
    certificate_der,
    chain_to_anchor,
    load_certificate,
    verifier_for,
)
from bastion.trust.signer import Signer, key_id

_HASHES = ("sha256", "sha384", "sha512")
_READ_CHUNK = 1 << 20


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


# --- signing -----------------------------------------------------------------------------


def sign_manifest(
    manifest: bytes,
    signer: Signer,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
    *,
    now: dt.datetime | None = None,
) -> bytes:
    """The DER CMS SignedData carrying ``manifest`` inline, signed by ``signer``."""
    scheme = signer.scheme
    if scheme not in SIGNATURE_ALGORITHM_NAMES:
        raise ConfigError(
            f"bundle signing needs RSA PKCS#1 v1.5 or ECDSA P-256/P-384, not {scheme}: "
            "open an RSA key with scheme rsa-pkcs1v15-sha256"
        )
    if key_id(certificate.public_key()) != signer.key_id:  # type: ignore[arg-type]
        raise ConfigError("the signing certificate does not hold the signer's public key")
    hash_name = scheme.hash_name or "sha256"
    signing_time = _now(now).astimezone(dt.UTC).replace(microsecond=0)
    attrs = [
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute(
            {"type": "signing_time", "values": [cms.Time({"utc_time": signing_time})]}
        ),
        cms.CMSAttribute(
            {"type": "message_digest", "values": [hashlib.new(hash_name, manifest).digest()]}
        ),
    ]
    # DER orders a SET OF by the encodings of its members
    signed_attrs = cms.CMSAttributes(sorted(attrs, key=lambda a: a.dump()))
    signature = signer.sign(signed_attrs.dump())
    acert = ax509.Certificate.load(certificate_der(certificate))
    sig_alg: dict[str, object] = {"algorithm": SIGNATURE_ALGORITHM_NAMES[scheme]}
    if scheme.key_type == "rsa":
        sig_alg["parameters"] = core.Null()
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                "issuer_and_serial_number",
                {"issuer": acert.issuer, "serial_number": acert.serial_number},
            ),
            "digest_algorithm": {"algorithm": hash_name},
            "signed_attrs": signed_attrs,
            "signature_algorithm": sig_alg,
            "signature": signature,
        }
    )
    certs = [acert] + [ax509.Certificate.load(certificate_der(c)) for c in chain]
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": hash_name}],
            "encap_content_info": {"content_type": "data", "content": manifest},
            "certificates": [cms.CertificateChoices("certificate", c) for c in certs],
            "signer_infos": [signer_info],
        }
    )
    der: bytes = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
    if len(der) > BUNDLE_SIGNATURE_MAX_SIZE:
        raise ConfigError(f"bundle signature is {len(der)} bytes (RAUC reads at most 64 KiB)")
    return der


# --- verification ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A CMS whose signature verified, chaining to ``anchor`` in the keyring."""

    manifest_bytes: bytes
    signer: x509.Certificate
    anchor: x509.Certificate
    hash_name: str


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signature and whole payload verified."""

    manifest: Manifest
    signer: x509.Certificate
    anchor: x509.Certificate
    payload_size: int
    root_hash: bytes


def _attr(attrs: cms.CMSAttributes, name: str) -> object:
    found = [a for a in attrs if a["type"].native == name]
    if len(found) != 1 or len(found[0]["values"]) != 1:
        raise SignatureError(f"bundle signature needs exactly one {name} signed attribute")
    return found[0]["values"][0].native


def verify_signature(
    sig: bytes, keyring: Sequence[x509.Certificate], *, now: dt.datetime | None = None
) -> SignedManifest:
    """Verify a bundle's inline-content CMS against ``keyring``; return the signed manifest."""
    if not keyring:
        raise SignatureError("bundle verification needs at least one keyring certificate")
    if len(sig) > BUNDLE_SIGNATURE_MAX_SIZE:
        raise FormatError(f"bundle signature is {len(sig)} bytes (limit 64 KiB)")
    try:
        info = cms.ContentInfo.load(sig, strict=True)
        if info["content_type"].native != "signed_data":
            raise FormatError(f"bundle CMS is {info['content_type'].native}, not signedData")
        sd = info["content"]
        eci = sd["encap_content_info"]
        if eci["content_type"].native != "data":
            raise FormatError("bundle CMS content type is not data")
        if not isinstance(eci["content"], core.OctetString) or eci["content"].native is None:
            raise SignatureError("bundle CMS has detached content (a plain-format bundle)")
        content: bytes = eci["content"].native
        signer_infos = list(sd["signer_infos"])
        carried = [c for c in sd["certificates"]] if sd["certificates"].native else []
        if len(carried) > BUNDLE_MAX_CERTIFICATES:
            raise FormatError(
                f"bundle CMS carries {len(carried)} certificates (limit {BUNDLE_MAX_CERTIFICATES})"
            )
        cert_ders = [c.chosen.dump() for c in carried if c.name == "certificate"]
        if len(signer_infos) != 1:
            raise SignatureError(f"bundle CMS has {len(signer_infos)} signers (expected 1)")
        si = signer_infos[0]
        hash_name = si["digest_algorithm"]["algorithm"].native
        sig_alg = si["signature_algorithm"]["algorithm"].native
        sid = si["sid"]
        if sid.name != "issuer_and_serial_number":
            raise SignatureError("bundle CMS signer is not identified by issuer and serial")
        issuer_der = sid.chosen["issuer"].dump()
        serial = sid.chosen["serial_number"].native
        if not si["signed_attrs"].native:
            raise SignatureError("bundle CMS signer has no signed attributes")
        attrs = si["signed_attrs"]
        signed_bytes = b"\x31" + attrs.dump()[1:]
        content_type = _attr(attrs, "content_type")
        message_digest = _attr(attrs, "message_digest")
        signature: bytes = si["signature"].native
    except (ValueError, TypeError, KeyError) as exc:
        raise FormatError(f"bundle CMS is malformed: {exc}") from exc
    if hash_name not in _HASHES:
        raise SignatureError(f"bundle CMS digest {hash_name} is not supported")
    known = sig_alg in SIGNATURE_ALGORITHM_HASH
    if not known or SIGNATURE_ALGORITHM_HASH[sig_alg] not in (None, hash_name):
        raise SignatureError(f"bundle CMS signature algorithm {sig_alg} is not supported")
    if content_type != "data":
        raise SignatureError("bundle CMS contentType attribute is not data")
    actual = hashlib.new(hash_name, content).digest()
    if not isinstance(message_digest, bytes) or not hmac.compare_digest(actual, message_digest):
        raise SignatureError("bundle CMS messageDigest does not match the signed manifest")
    pool = [load_certificate(d, "bundle") for d in cert_ders]
    signer_cert = next(
        (c for c in pool if c.issuer.public_bytes() == issuer_der and c.serial_number == serial),
        None,
    )
    if signer_cert is None:
        raise SignatureError("bundle CMS does not carry the signer's certificate")
    verifier = verifier_for(signer_cert, hash_name, "bundle", scheme_what="bundle signature")
    verifier.verify(signed_bytes, signature)
    anchor = chain_to_anchor(
        signer_cert, pool, keyring, "bundle", trusted_name="keyring", now=_now(now)
    )
    return SignedManifest(content, signer_cert, anchor, hash_name)


def _read_at(stream: BinaryIO, offset: int, size: int) -> bytes:
    stream.seek(offset)
    data = stream.read(size)
    if len(data) != size:
        raise FormatError(f"bundle is truncated: {len(data)} of {size} bytes at {offset}")
    return data


def verify_payload(
    stream: BinaryIO, payload_size: int, tree_size: int, root_hash: bytes, salt: bytes
) -> None:
    """Recompute the dm-verity tree over the payload; DigestMismatchError names the block."""
    params = verity.VerityParams(
        data_blocks=payload_size // BUNDLE_BLOCK_SIZE,
        salt=salt,
        data_block_size=BUNDLE_BLOCK_SIZE,
        hash_block_size=BUNDLE_BLOCK_SIZE,
    )
    expected_tree = params.tree_size()
    if tree_size != expected_tree:
        raise FormatError(
            f"bundle verity-size is {tree_size} bytes, the tree over {params.data_blocks} "
            f"blocks takes {expected_tree}"
        )
    stored = _read_at(stream, payload_size, tree_size)
    start_block = payload_size // BUNDLE_BLOCK_SIZE
    verity.verify_hash_tree(params, stored, root_hash, start_block)
    geo = params.geometry()
    level0 = memoryview(stored)[geo.level_offsets[0] * BUNDLE_BLOCK_SIZE :]
    hasher = verity.VerityHasher(params)
    stream.seek(0)
    done = 0
    level0_parts: list[bytes] = []
    while done < payload_size:
        chunk = stream.read(min(_READ_CHUNK, payload_size - done))
        if not chunk or len(chunk) % BUNDLE_BLOCK_SIZE:
            raise FormatError(f"bundle payload is truncated at byte {done + len(chunk)}")
        first = done // BUNDLE_BLOCK_SIZE
        computed = hasher.pack(hasher.digests(chunk, BUNDLE_BLOCK_SIZE))
        # a chunk is a multiple of the fanout (1 MiB / 4 KiB = 256 > 128 digests)
        stored_part = level0[(first // params.fanout) * BUNDLE_BLOCK_SIZE :]
        verity.check_data_digests(
            params, stored_part, computed, len(chunk) // BUNDLE_BLOCK_SIZE, first
        )
        level0_parts.append(computed)
        done += len(chunk)
    # the tree must be exactly the one over this payload (as RAUC recomputes it): a
    # stored level 0 with digests past the last data block means a truncated payload
    rebuilt = verity.build_upper_levels(params, b"".join(level0_parts))
    if rebuilt.hash_area != stored or not hmac.compare_digest(rebuilt.root_hash, root_hash):
        index = next(
            i
            for i in range(len(stored) // BUNDLE_BLOCK_SIZE)
            if stored[i * BUNDLE_BLOCK_SIZE : (i + 1) * BUNDLE_BLOCK_SIZE]
            != rebuilt.hash_area[i * BUNDLE_BLOCK_SIZE : (i + 1) * BUNDLE_BLOCK_SIZE]
        )
        raise DigestMismatchError(
            f"verity hash block {start_block + index} does not match the tree over the "
            f"{params.data_blocks}-block payload (truncated or extended payload)",
            area="hash",
            block=start_block + index,
            level=None,
        )


def verify_bundle(
    stream: BinaryIO, keyring: Sequence[x509.Certificate], *, now: dt.datetime | None = None
) -> VerifiedBundle:
    """Verify a whole verity bundle read from ``stream``; raise on the first failure."""
    size = stream.seek(0, 2)
    trailer = parse_trailer(size, _read_at(stream, size - TRAILER_SIZE, TRAILER_SIZE))
    sig = _read_at(stream, trailer.signature_offset, trailer.signature_size)
    signed = verify_signature(sig, keyring, now=now)
    manifest = parse_manifest(signed.manifest_bytes)
    if manifest.bundle_format != FORMAT_VERITY or not manifest.has_verity:
        raise SignatureError(
            f"bundle manifest format is {manifest.bundle_format!r} without verity metadata "
            "(bastion accepts verity bundles only)"
        )
    assert manifest.verity_size is not None and manifest.verity_hash and manifest.verity_salt
    layout = split_verity(trailer.signed_size, manifest.verity_size)
    root_hash = bytes.fromhex(manifest.verity_hash)
    verify_payload(
        stream,
        layout.payload_size,
        layout.tree_size,
        root_hash,
        bytes.fromhex(manifest.verity_salt),
    )
    return VerifiedBundle(manifest, signed.signer, signed.anchor, layout.payload_size, root_hash)


def bundle_golden(stream: BinaryIO, verified: VerifiedBundle) -> bytes | None:
    """The golden statement the verified bundle read from ``stream`` carries (None when
    its manifest names none). FormatError when the named bytes lie outside the payload,
    DigestMismatchError when they differ from the signed SHA-256."""
    ref = golden_ref(verified.manifest)
    if ref is None:
        return None
    if ref.offset + ref.size > verified.payload_size:
        raise FormatError(
            f"bundle golden statement at {ref.offset}+{ref.size} lies outside the "
            f"{verified.payload_size}-byte payload"
        )
    data = _read_at(stream, ref.offset, ref.size)
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, ref.sha256):
        raise DigestMismatchError(
            f"bundle golden statement {ref.filename} has sha256 {actual}, the signed "
            f"manifest names {ref.sha256}",
            area="golden",
        )
    return data


def verify_bundle_bytes(
    data: bytes, keyring: Sequence[x509.Certificate], *, now: dt.datetime | None = None
) -> VerifiedBundle:
    """:func:`verify_bundle` over bytes in memory."""
    import io

    return verify_bundle(io.BytesIO(data), keyring, now=now)


def load_keyring(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM keyring (RAUC's ``--keyring`` file)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise FormatError(f"keyring is not a PEM certificate bundle: {exc}") from exc
    return list(certs)


__all__ = [
    "DigestMismatchError",
    "bundle_golden",
    "SignedManifest",
    "VerifiedBundle",
    "load_keyring",
    "sign_manifest",
    "verify_bundle",
    "verify_bundle_bytes",
    "verify_payload",
    "verify_signature",
]
