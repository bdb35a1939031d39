"""Authenticode: sign a PE image and verify its signatures against a Secure Boot db.

A signature is a PKCS#7 SignedData (RFC 2315 / RFC 5652) in a WIN_CERTIFICATE of type
``WIN_CERT_TYPE_PKCS_SIGNED_DATA`` (:mod:`bastion.formats.pe`). Its content is an
``SpcIndirectDataContent`` (OID 1.3.6.1.4.1.311.2.1.4)::

    SpcIndirectDataContent ::= SEQUENCE {
        data           SEQUENCE { type OID (1.3.6.1.4.1.311.2.1.15, SpcPeImageData),
                                  value SpcPeImageData },
        messageDigest  DigestInfo }      -- the Authenticode image hash

The single SignerInfo carries signed attributes: ``contentType`` (the OID above) and
``messageDigest``, which is the hash of the **content octets** of the
SpcIndirectDataContent DER (without its SEQUENCE tag and length: an Authenticode quirk
that sbsign, pesign and EDK2 all follow), plus an empty ``SpcSpOpusInfo``. The
signature covers the DER of the signed attributes as a SET. The signer certificate (and
any intermediates given) travel in ``certificates``. bastion adds no signing time, so an
RSA signature of the same image with the same key is byte-for-byte reproducible.

Verification (:func:`verify_pe`) follows UEFI's DxeImageVerificationLib: the image is
accepted if **any** of its signatures verifies completely and chains to a certificate in
``db`` (the signer certificate itself, or an issuer reached through certificates carried
in the SignedData). Certificate validity dates are not checked, as firmware has no
trusted clock to check them with. When no signature verifies it raises the failure of
the only signature, or a :class:`SignatureError` listing each one.

ASN.1 is encoded and decoded with asn1crypto (ADR 0016); the signing key is reached only
through a :class:`~bastion.trust.signer.Signer`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    LimitError,
    SignatureError,
    VerificationError,
)
from bastion.formats.pe import (
    WIN_CERT_REVISION_2_0,
    WIN_CERT_TYPE_PKCS_SIGNED_DATA,
    PeImage,
    WinCertificate,
)
from bastion.limits import AUTHENTICODE_MAX_CERTS, CERT_CHAIN_MAX_DEPTH, PE_MAX_CERT_TABLE_SIZE
from bastion.trust.signer import SignatureScheme, Signer, Verifier, key_id

SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
SPC_SP_OPUS_INFO = "1.3.6.1.4.1.311.2.1.12"
_OBSOLETE = "<<<Obsolete>>>"  # the SpcLink file name sbsign and signtool write

_SCHEMES: dict[tuple[str, str], SignatureScheme] = {
    ("rsa", "sha256"): SignatureScheme.RSA_PKCS1V15_SHA256,
    ("rsa", "sha384"): SignatureScheme.RSA_PKCS1V15_SHA384,
    ("rsa", "sha512"): SignatureScheme.RSA_PKCS1V15_SHA512,
    ("secp256r1", "sha256"): SignatureScheme.ECDSA_P256_SHA256,
    ("secp384r1", "sha384"): SignatureScheme.ECDSA_P384_SHA384,
}
_SIG_ALG_NAMES = {
    SignatureScheme.RSA_PKCS1V15_SHA256: "rsassa_pkcs1v15",
    SignatureScheme.RSA_PKCS1V15_SHA384: "rsassa_pkcs1v15",
    SignatureScheme.RSA_PKCS1V15_SHA512: "rsassa_pkcs1v15",
    SignatureScheme.ECDSA_P256_SHA256: "sha256_ecdsa",
    SignatureScheme.ECDSA_P384_SHA384: "sha384_ecdsa",
}
# signatureAlgorithm values accepted in a SignerInfo, with the hash they imply (None: any)
_SIG_ALG_HASH: dict[str, str | None] = {
    "rsassa_pkcs1v15": None,
    "sha256_rsa": "sha256",
    "sha384_rsa": "sha384",
    "sha512_rsa": "sha512",
    "sha256_ecdsa": "sha256",
    "sha384_ecdsa": "sha384",
    "ecdsa": None,
}


# --- the Authenticode ASN.1 types (Microsoft Authenticode PE, "Authenticode-Specific
# Structures") -------------------------------------------------------------------------


class SpcString(core.Choice):
    _alternatives = [
        ("unicode", core.BMPString, {"implicit": 0}),
        ("ascii", core.IA5String, {"implicit": 1}),
    ]


class SpcSerializedObject(core.Sequence):
    _fields = [("class_id", core.OctetString), ("serialized_data", core.OctetString)]


class SpcLink(core.Choice):
    _alternatives = [
        ("url", core.IA5String, {"implicit": 0}),
        ("moniker", SpcSerializedObject, {"implicit": 1}),
        ("file", SpcString, {"explicit": 2}),
    ]


class SpcPeImageData(core.Sequence):
    _fields = [
        ("flags", core.BitString, {"optional": True}),
        ("file", SpcLink, {"explicit": 0, "optional": True}),
    ]


class SpcAttributeTypeAndOptionalValue(core.Sequence):
    _fields = [("type", core.ObjectIdentifier), ("value", core.Any, {"optional": True})]


class DigestInfo(core.Sequence):
    _fields = [("digest_algorithm", algos.DigestAlgorithm), ("digest", core.OctetString)]


class SpcIndirectDataContent(core.Sequence):
    _fields = [("data", SpcAttributeTypeAndOptionalValue), ("message_digest", DigestInfo)]


class SpcContentInfo(core.Sequence):
    _fields = [
        ("content_type", core.ObjectIdentifier),
        ("content", SpcIndirectDataContent, {"explicit": 0}),
    ]


class AuthenticodeSignedData(core.Sequence):
    """cms.SignedData with the Authenticode content in place of eContent."""

    _fields = [
        ("version", cms.CMSVersion),
        ("digest_algorithms", cms.DigestAlgorithms),
        ("encap_content_info", SpcContentInfo),
        ("certificates", cms.CertificateSet, {"implicit": 0, "optional": True}),
        ("crls", cms.RevocationInfoChoices, {"implicit": 1, "optional": True}),
        ("signer_infos", cms.SignerInfos),
    ]


class AuthenticodeContentInfo(core.Sequence):
    _fields = [
        ("content_type", cms.ContentType),
        ("content", AuthenticodeSignedData, {"explicit": 0}),
    ]


# --- decoded signatures ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticodeSignature:
    """One decoded Authenticode signature (not yet verified)."""

    hash_name: str
    image_digest: bytes
    issuer: bytes  # DER Name of the signer certificate's issuer
    serial: int
    signature_algorithm: str
    signed_attrs: bytes  # DER of the signed attributes as a SET: what the signature covers
    content_digest: bytes  # messageDigest attribute
    content: bytes  # content octets of SpcIndirectDataContent (hashed into messageDigest)
    signature: bytes
    certificates: tuple[bytes, ...]  # DER X.509 certificates carried in the SignedData

    @classmethod
    def parse(cls, der: bytes) -> AuthenticodeSignature:
        """Decode a WIN_CERTIFICATE's PKCS#7 (trailing zero padding allowed)."""
        try:
            return cls._parse(der)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise FormatError(f"Authenticode signature is malformed: {exc}") from exc

    @classmethod
    def _parse(cls, der: bytes) -> AuthenticodeSignature:
        if len(der) > PE_MAX_CERT_TABLE_SIZE:
            raise LimitError(f"Authenticode signature of {len(der)} bytes exceeds the limit")
        outer = core.Asn1Value.load(der)  # finds the DER length; the rest must be padding
        used = len(outer.dump())
        if der[used:].strip(b"\0"):
            raise FormatError("Authenticode signature: non-zero bytes after the PKCS#7")
        info = AuthenticodeContentInfo.load(der[:used], strict=True)
        if info["content_type"].native != "signed_data":
            raise FormatError("Authenticode signature: content type is not signedData")
        sd = info["content"]
        eci = sd["encap_content_info"]
        if eci["content_type"].dotted != SPC_INDIRECT_DATA:
            raise FormatError(
                f"Authenticode signature: content type {eci['content_type'].dotted}, "
                f"expected SpcIndirectDataContent {SPC_INDIRECT_DATA}"
            )
        spc = eci["content"]
        if spc["data"]["type"].dotted != SPC_PE_IMAGE_DATA:
            raise FormatError("Authenticode signature: data type is not SpcPeImageData")
        digest_info = spc["message_digest"]
        hash_name = digest_info["digest_algorithm"]["algorithm"].native
        if hash_name not in ("sha256", "sha384", "sha512"):
            raise FormatError(f"Authenticode image digest {hash_name}: expected sha256/384/512")
        image_digest = digest_info["digest"].native
        if len(image_digest) != hashlib.new(hash_name).digest_size:
            raise FormatError(f"Authenticode image digest has {len(image_digest)} bytes")
        certs: list[bytes] = []
        for choice in sd["certificates"] or []:
            if len(certs) >= AUTHENTICODE_MAX_CERTS:
                raise LimitError(f"SignedData carries more than {AUTHENTICODE_MAX_CERTS} certs")
            if choice.name != "certificate":
                continue
            certs.append(choice.chosen.dump())
        infos = sd["signer_infos"]
        if len(infos) != 1:
            raise FormatError(f"Authenticode signature has {len(infos)} signers, expected 1")
        si = infos[0]
        sid = si["sid"]
        if sid.name != "issuer_and_serial_number":
            raise FormatError("Authenticode signer must be named by issuer and serial number")
        if si["digest_algorithm"]["algorithm"].native != hash_name:
            raise FormatError(
                f"Authenticode signer digest {si['digest_algorithm']['algorithm'].native} "
                f"differs from the image digest's {hash_name}"
            )
        signed = si["signed_attrs"]
        if not signed:
            raise FormatError("Authenticode signer has no signed attributes")
        content_type = None
        message_digest = None
        for attr in signed:
            kind = attr["type"].native
            if kind in ("content_type", "message_digest"):
                if len(attr["values"]) != 1:
                    raise FormatError(f"Authenticode signed attribute {kind} must have 1 value")
                value = attr["values"][0].native
                if kind == "content_type":
                    if content_type is not None:
                        raise FormatError("Authenticode: duplicate contentType attribute")
                    content_type = attr["values"][0].dotted
                else:
                    if message_digest is not None:
                        raise FormatError("Authenticode: duplicate messageDigest attribute")
                    message_digest = value
        if content_type != SPC_INDIRECT_DATA:
            raise FormatError(
                f"Authenticode signed contentType is {content_type}, expected {SPC_INDIRECT_DATA}"
            )
        if not isinstance(message_digest, bytes):
            raise FormatError("Authenticode signer has no messageDigest attribute")
        sig_alg = si["signature_algorithm"]["algorithm"].native
        if sig_alg not in _SIG_ALG_HASH:
            raise FormatError(f"Authenticode signature algorithm {sig_alg} is not supported")
        implied = _SIG_ALG_HASH[sig_alg]
        if implied is not None and implied != hash_name:
            raise FormatError(f"signature algorithm {sig_alg} does not use {hash_name}")
        return cls(
            hash_name=hash_name,
            image_digest=image_digest,
            issuer=sid.chosen["issuer"].dump(),
            serial=sid.chosen["serial_number"].native,
            signature_algorithm=sig_alg,
            signed_attrs=b"\x31" + signed.dump()[1:],
            content_digest=message_digest,
            content=spc.contents,
            signature=si["signature"].native,
            certificates=tuple(certs),
        )

    def signer_certificate(self) -> x509.Certificate:
        """The carried certificate named by issuer and serial; SignatureError if absent."""
        for der in self.certificates:
            cert = _load_cert(der)
            try:
                if cert.serial_number == self.serial and cert.issuer.public_bytes() == self.issuer:
                    return cert
            except ValueError as exc:
                raise FormatError(f"Authenticode certificate is malformed: {exc}") from exc
        raise SignatureError(
            f"Authenticode signer certificate (serial {self.serial:x}) is not in the signature"
        )


def _load_cert(der: bytes) -> x509.Certificate:
    """Load a carried certificate and parse, now, the fields verification reads
    (cryptography parses lazily, so a bad name would otherwise fail much later)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.subject.rfc4514_string()
        cert.issuer.public_bytes()
        _ = cert.serial_number
        return cert
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        raise FormatError(f"Authenticode signature carries a bad certificate: {exc}") from exc


# --- signing -----------------------------------------------------------------------------


def _spc_content(hash_name: str, image_digest: bytes) -> SpcIndirectDataContent:
    pe_data = SpcPeImageData(
        {"flags": core.BitString(()), "file": SpcLink("file", SpcString("unicode", _OBSOLETE))}
    )
    return SpcIndirectDataContent(
        {
            "data": {"type": SPC_PE_IMAGE_DATA, "value": core.Any(pe_data)},
            "message_digest": {
                "digest_algorithm": {"algorithm": hash_name, "parameters": core.Null()},
                "digest": image_digest,
            },
        }
    )


def scheme_for(signer: Signer) -> SignatureScheme:
    """The Authenticode signature scheme of ``signer``; ConfigError if it has none."""
    if signer.scheme not in _SIG_ALG_NAMES:
        raise ConfigError(
            f"Authenticode needs RSA PKCS#1 v1.5 or ECDSA P-256/P-384, not {signer.scheme}: "
            "open an RSA key with scheme rsa-pkcs1v15-sha256"
        )
    return signer.scheme


def signature_for(
    image: PeImage,
    signer: Signer,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
) -> bytes:
    """The DER PKCS#7 Authenticode signature of ``image`` (prepared for signing)."""
    scheme = scheme_for(signer)
    if key_id(certificate.public_key()) != signer.key_id:  # type: ignore[arg-type]
        raise ConfigError("the signing certificate does not hold the signer's public key")
    hash_name = scheme.hash_name or "sha256"
    digest = image.authenticode_digest(hash_name)
    spc = _spc_content(hash_name, digest)
    content_digest = hashlib.new(hash_name, spc.contents).digest()
    attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": [SPC_INDIRECT_DATA]}),
            cms.CMSAttribute({"type": "message_digest", "values": [content_digest]}),
            cms.CMSAttribute({"type": SPC_SP_OPUS_INFO, "values": [core.Any.load(b"\x30\x00")]}),
        ]
    )
    signature = signer.sign(attrs.dump())
    cert_der = certificate.public_bytes(serialization.Encoding.DER)
    acert = ax509.Certificate.load(cert_der)
    sig_alg: dict[str, object] = {"algorithm": _SIG_ALG_NAMES[scheme]}
    if scheme.key_type == "rsa":
        sig_alg["parameters"] = core.Null()
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                "issuer_and_serial_number",
                {"issuer": acert.issuer, "serial_number": acert.serial_number},
            ),
            "digest_algorithm": {"algorithm": hash_name, "parameters": core.Null()},
            "signed_attrs": attrs,
            "signature_algorithm": sig_alg,
            "signature": signature,
        }
    )
    certs = [acert] + [
        ax509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in chain
    ]
    signed_data = AuthenticodeSignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": hash_name, "parameters": core.Null()}],
            "encap_content_info": {"content_type": SPC_INDIRECT_DATA, "content": spc},
            "certificates": [cms.CertificateChoices("certificate", c) for c in certs],
            "signer_infos": [signer_info],
        }
    )
    der: bytes = AuthenticodeContentInfo(
        {"content_type": "signed_data", "content": signed_data}
    ).dump()
    return der


def sign_pe(
    data: bytes,
    signer: Signer,
    certificate: x509.Certificate,
    *,
    chain: Sequence[x509.Certificate] = (),
    append: bool = False,
) -> bytes:
    """Sign the PE image ``data``: replace its signatures, or ``append`` another one.

    The new signature is verified against ``certificate`` before the image is returned.
    """
    image = PeImage.parse(data)
    keep = list(image.certificates) if append else []
    base = image.prepared_for_signing()
    der = signature_for(base, signer, certificate, chain)
    parsed = AuthenticodeSignature.parse(der)
    _verify_one(parsed, base, (certificate,))
    entry = WinCertificate(der, WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA)
    return base.with_certificates([*keep, entry])


# --- verification ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedImage:
    """An image whose signature ``index`` verified and chains to ``anchor`` in db."""

    image: PeImage
    index: int
    hash_name: str
    digest: bytes
    signer: x509.Certificate
    anchor: x509.Certificate
    #: (index, message) of every signature that did not verify
    failures: tuple[tuple[int, str], ...]


def _verifier_for(cert: x509.Certificate, hash_name: str) -> Verifier:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise FormatError(f"Authenticode signer certificate has a bad public key: {exc}") from exc
    if isinstance(key, rsa.RSAPublicKey):
        kind = "rsa"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind = key.curve.name
    else:
        raise SignatureError(f"Authenticode signer key {type(key).__name__} is not RSA or ECDSA")
    scheme = _SCHEMES.get((kind, hash_name))
    if scheme is None:
        raise SignatureError(f"Authenticode: a {kind} key with {hash_name} is not supported")
    try:
        return Verifier.of(key, scheme)
    except ConfigError as exc:
        raise SignatureError(f"Authenticode signer key refused: {exc}") from exc


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _anchor(
    signer: x509.Certificate, pool: Sequence[x509.Certificate], db: Sequence[x509.Certificate]
) -> x509.Certificate:
    """The db certificate ``signer`` chains to (through ``pool``); SignatureError if none."""
    current = signer
    seen: set[bytes] = set()
    for _ in range(CERT_CHAIN_MAX_DEPTH):
        der = current.public_bytes(serialization.Encoding.DER)
        for trusted in db:
            if trusted.public_bytes(serialization.Encoding.DER) == der:
                return trusted
        for trusted in db:
            if _issued_by(current, trusted):
                return trusted
        seen.add(der)
        nxt = next(
            (
                c
                for c in pool
                if c.public_bytes(serialization.Encoding.DER) not in seen and _issued_by(current, c)
            ),
            None,
        )
        if nxt is None:
            break
        current = nxt
    raise SignatureError(
        f"Authenticode signer {signer.subject.rfc4514_string()!r} does not chain to any "
        f"of the {len(db)} db certificate(s)"
    )


def _verify_one(
    sig: AuthenticodeSignature, image: PeImage, db: Sequence[x509.Certificate]
) -> tuple[bytes, x509.Certificate, x509.Certificate]:
    digest = image.authenticode_digest(sig.hash_name)
    if digest != sig.image_digest:
        raise DigestMismatchError(
            f"Authenticode image digest ({sig.hash_name}) differs: signed "
            f"{sig.image_digest.hex()}, image {digest.hex()}",
            area="image",
        )
    actual = hashlib.new(sig.hash_name, sig.content).digest()
    if actual != sig.content_digest:
        raise DigestMismatchError(
            "Authenticode messageDigest attribute does not match the SpcIndirectDataContent",
            area="content",
        )
    signer = sig.signer_certificate()
    _verifier_for(signer, sig.hash_name).verify(sig.signed_attrs, sig.signature)
    pool = [_load_cert(c) for c in sig.certificates]
    return digest, signer, _anchor(signer, pool, db)


def verify_pe(data: bytes | PeImage, db: Sequence[x509.Certificate]) -> VerifiedImage:
    """Verify ``data``'s Authenticode signatures against ``db``; raise if none verifies."""
    image = data if isinstance(data, PeImage) else PeImage.parse(data)
    if not db:
        raise SignatureError("Authenticode verification needs at least one db certificate")
    if not image.certificates:
        raise SignatureError("PE image is not signed: its certificate table is empty")
    failures: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    for index, entry in enumerate(image.certificates):
        try:
            if (entry.revision, entry.cert_type) != (
                WIN_CERT_REVISION_2_0,
                WIN_CERT_TYPE_PKCS_SIGNED_DATA,
            ):
                raise FormatError(
                    f"WIN_CERTIFICATE revision 0x{entry.revision:x} type 0x{entry.cert_type:x}: "
                    "expected 0x200 / 0x2 (PKCS#7 SignedData)"
                )
            sig = AuthenticodeSignature.parse(entry.certificate)
            digest, signer, anchor = _verify_one(sig, image, db)
        except (FormatError, VerificationError) as exc:
            failures.append((index, str(exc)))
            errors.append(exc)
            continue
        return VerifiedImage(image, index, sig.hash_name, digest, signer, anchor, tuple(failures))
    if len(errors) == 1:
        only = errors[0]
        if isinstance(only, VerificationError):
            raise only
        raise SignatureError(f"Authenticode signature 0 is malformed: {only}") from only
    detail = "; ".join(f"#{i}: {m}" for i, m in failures)
    raise SignatureError(f"none of the {len(failures)} Authenticode signatures verifies: {detail}")
