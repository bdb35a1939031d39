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
from bastion.limits import AUTHENTICODE_MAX_CERTS, PE_MAX_CERT_TABLE_SIZE
from bastion.trust.cms import (
    SIGNATURE_ALGORITHM_HASH,
    SIGNATURE_ALGORITHM_NAMES,
    certificate_der,
    chain_to_anchor,
    load_certificate,
    verifier_for,
)
from bastion.trust.signer import SignatureScheme, Signer, key_id

SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
SPC_SP_OPUS_INFO = "1.3.6.1.4.1.311.2.1.12"
_OBSOLETE = "<<<Obsolete>>>"  # the SpcLink file name sbsign and signtool write


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
        if sig_alg not in SIGNATURE_ALGORITHM_HASH:
            raise FormatError(f"Authenticode signature algorithm {sig_alg} is not supported")
        implied = SIGNATURE_ALGORITHM_HASH[sig_alg]
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
            cert = load_certificate(der, "Authenticode")
            try:
                if cert.serial_number == self.serial and cert.issuer.public_bytes() == self.issuer:
                    return cert
            except ValueError as exc:
                raise FormatError(f"Authenticode certificate is malformed: {exc}") from exc
        raise SignatureError(
            f"Authenticode signer certificate (serial {self.serial:x}) is not in the signature"
        )


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
    if signer.scheme not in SIGNATURE_ALGORITHM_NAMES:
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
    cert_der = certificate_der(certificate)
    acert = ax509.Certificate.load(cert_der)
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
            "digest_algorithm": {"algorithm": hash_name, "parameters": core.Null()},
            "signed_attrs": attrs,
            "signature_algorithm": sig_alg,
            "signature": signature,
        }
    )
    certs = [acert] + [ax509.Certificate.load(certificate_der(c)) for c in chain]
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
    verifier_for(signer, sig.hash_name, "Authenticode").verify(sig.signed_attrs, sig.signature)
    pool = [load_certificate(c, "Authenticode") for c in sig.certificates]
    # no validity dates: firmware has no trusted clock to check them with
    anchor = chain_to_anchor(signer, pool, db, "Authenticode", trusted_name="db", now=None)
    return digest, signer, anchor


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
