"""PKCS#7 / CMS SignedData (RFC 2315, RFC 5652) for UEFI authenticated variables.

This is the structure UEFI carries in an ``EFI_VARIABLE_AUTHENTICATION_2`` header: the
**bare** SignedData (no ContentInfo wrapper; edk2 looks for the SHA-256 OID at byte 13)
with detached ``data`` content, the signer's certificate(s) and one SignerInfo. What
efitools' ``sign-efi-sig-list`` writes (OpenSSL ``PKCS7_sign`` with NOATTR) is exactly
what :meth:`SignedData.to_bytes` writes for the same key, certificate and content:
version 1, digest algorithms ``{sha256 NULL}``, content type ``data``, ``[0]``
certificates, one SignerInfo (version 1, issuer and serial number, ``sha256 NULL``,
``rsaEncryption NULL``, the RSA PKCS#1 v1.5 signature). ``sbvarsign`` adds signed
attributes (contentType, signingTime, messageDigest); :meth:`SignedData.parse` keeps
them (raw, and as (OID, values) pairs) so the verifier can check them.

ASN.1 goes through asn1crypto, as for Authenticode (ADR 0016): this module maps its CMS
objects to small frozen dataclasses whose OIDs are DER content octets. Parsing is
bounded (``EFI_AUTH_CERT_MAX_SIZE``, ``EFI_AUTH_MAX_CERTIFICATES``), wraps every
asn1crypto exception in :class:`FormatError`, and is strict DER: the input must
re-encode to exactly itself (asn1crypto alone would take BER lengths), and certificates
must parse as X.509.

Pure: bytes in, frozen objects out. The verifier (which key, which digest, what the
attributes must say) is :mod:`bastion.trust.secureboot`.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import cms, core
from asn1crypto import x509 as ax509

from bastion.errors import FormatError, LimitError
from bastion.formats.modsig import der_read, der_tlv
from bastion.limits import EFI_AUTH_CERT_MAX_SIZE, EFI_AUTH_MAX_CERTIFICATES

OID_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")
OID_DATA = bytes.fromhex("2a864886f70d010701")
OID_SHA256 = bytes.fromhex("608648016503040201")
OID_RSA = bytes.fromhex("2a864886f70d010101")
OID_SHA256_WITH_RSA = bytes.fromhex("2a864886f70d01010b")
OID_CONTENT_TYPE = bytes.fromhex("2a864886f70d010903")
OID_MESSAGE_DIGEST = bytes.fromhex("2a864886f70d010904")

_MAX_ATTRIBUTES = 32
_MAX_SIGNERS = 4


_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError)


def _first_child_tag(data: bytes) -> int:
    _, start, end = der_read(data, 0)
    return der_read(data[:end], start)[0] if start < end else -1


def _dotted(oid: bytes) -> str:
    """The dotted form of an OID given as its DER content octets."""
    return str(core.ObjectIdentifier.load(der_tlv(0x06, oid)).dotted)


def _oid(value: core.ObjectIdentifier) -> bytes:
    return bytes(value.contents)


def _alg(oid: bytes) -> dict[str, object]:
    return {"algorithm": _dotted(oid), "parameters": core.Null()}


def _alg_oid(alg: core.Sequence, what: str) -> bytes:
    """The OID of an AlgorithmIdentifier whose parameters are absent or NULL."""
    params = alg["parameters"]
    if not isinstance(params, (core.Void, core.Null)) and params.contents:
        raise FormatError(f"SignedData: {what} parameters must be absent or NULL")
    return _oid(alg["algorithm"])


def _small_int(value: core.Integer, what: str) -> int:
    raw = bytes(value.contents or b"")
    if not 1 <= len(raw) <= 2:
        raise FormatError(f"{what} is not a small INTEGER")
    return int.from_bytes(raw, "big", signed=True)


@dataclass(frozen=True, slots=True)
class Attribute:
    """One signed attribute: its OID (content bytes) and the DER of each value."""

    oid: bytes
    values: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SignerInfo:
    """One SignerInfo. ``issuer`` is a DER Name; ``subject_key_id`` is set for version 3.

    ``signed_attributes`` is the DER of the ``[0] IMPLICIT SET OF Attribute`` content
    (empty when there are none); the signature covers it re-tagged as a SET (0x31).
    """

    version: int
    issuer: bytes
    serial: int
    subject_key_id: bytes
    digest_oid: bytes
    signed_attributes: bytes
    attributes: tuple[Attribute, ...]
    signature_oid: bytes
    signature: bytes

    def signed_attributes_der(self) -> bytes:
        """What the signature covers when there are signed attributes (a DER SET)."""
        return der_tlv(0x31, self.signed_attributes)

    def attribute(self, oid: bytes) -> Attribute | None:
        """The attribute with ``oid`` (None when absent)."""
        found = [a for a in self.attributes if a.oid == oid]
        if len(found) > 1:
            raise FormatError(f"SignedData: attribute {oid.hex()} appears {len(found)} times")
        return found[0] if found else None


@dataclass(frozen=True, slots=True)
class SignedData:
    """A PKCS#7 SignedData: detached or not, certificates as DER, its SignerInfos."""

    version: int
    digest_oids: tuple[bytes, ...]
    content_type: bytes
    content: bytes | None
    certificates: tuple[bytes, ...]
    signer_infos: tuple[SignerInfo, ...]

    @classmethod
    def detached(
        cls, *, certificate: bytes, issuer: bytes, serial: int, signature: bytes
    ) -> SignedData:
        """The firmware form: sha256, detached ``data``, one RSA signer, no attributes."""
        info = SignerInfo(1, issuer, serial, b"", OID_SHA256, b"", (), OID_RSA, signature)
        return cls(1, (OID_SHA256,), OID_DATA, None, (certificate,), (info,))

    def to_bytes(self) -> bytes:
        """The bare SignedData DER (what goes into WIN_CERTIFICATE_UEFI_GUID.CertData)."""
        encap: dict[str, object] = {"content_type": _dotted(self.content_type)}
        if self.content is not None:
            encap["content"] = self.content
        infos = []
        for si in self.signer_infos:
            if si.subject_key_id:
                sid = cms.SignerIdentifier({"subject_key_identifier": si.subject_key_id})
            else:
                sid = cms.SignerIdentifier(
                    {
                        "issuer_and_serial_number": {
                            "issuer": ax509.Name.load(si.issuer),
                            "serial_number": si.serial,
                        }
                    }
                )
            info: dict[str, object] = {
                "version": si.version,
                "sid": sid,
                "digest_algorithm": _alg(si.digest_oid),
                "signature_algorithm": _alg(si.signature_oid),
                "signature": si.signature,
            }
            if si.signed_attributes:
                info["signed_attrs"] = cms.CMSAttributes.load(si.signed_attributes_der())
            infos.append(cms.SignerInfo(info))
        fields: dict[str, object] = {
            "version": self.version,
            "digest_algorithms": [_alg(o) for o in self.digest_oids],
            "encap_content_info": encap,
            "signer_infos": infos,
        }
        if self.certificates:
            fields["certificates"] = [cms.CertificateChoices.load(c) for c in self.certificates]
        return bytes(cms.SignedData(fields).dump())

    @classmethod
    def parse(cls, data: bytes, *, allow_content_info: bool = False) -> SignedData:
        """Decode a bare SignedData (or, if allowed, one wrapped in a ContentInfo).

        The input must be DER: it has to re-encode to exactly the bytes given.
        """
        if len(data) > EFI_AUTH_CERT_MAX_SIZE:
            raise LimitError(f"SignedData is {len(data)} bytes, limit {EFI_AUTH_CERT_MAX_SIZE}")
        try:
            if allow_content_info and _first_child_tag(data) == 0x06:
                info = cms.ContentInfo.load(bytes(data), strict=True)
                if info["content_type"].dotted != _dotted(OID_SIGNED_DATA):
                    raise FormatError("ContentInfo: content type is not signedData")
                if info.dump(force=True) != bytes(data):
                    raise FormatError("ContentInfo is not DER")
                _, start, end = der_read(data, 0)
                _, _, oid_end = der_read(data[:end], start)
                _, inner_start, inner_end = der_read(data[:end], oid_end)
                return cls.parse(bytes(data[inner_start:inner_end]))
            sd = cms.SignedData.load(bytes(data), strict=True)
            parsed = cls._from_asn1(sd)
            if sd.dump(force=True) != bytes(data):
                raise FormatError("SignedData is not DER (it does not re-encode to itself)")
            return parsed
        except FormatError:
            raise
        except _ASN1_ERRORS as exc:
            raise FormatError(f"SignedData is malformed: {exc}") from exc

    @classmethod
    def _from_asn1(cls, sd: cms.SignedData) -> SignedData:
        version = _small_int(sd["version"], "SignedData version")
        digests = tuple(_alg_oid(d, "digest algorithm") for d in sd["digest_algorithms"])
        encap = sd["encap_content_info"]
        content: bytes | None = None
        if not isinstance(encap["content"], core.Void):
            value = encap["content"].native
            if not isinstance(value, bytes):
                raise FormatError("SignedData: content must be one OCTET STRING")
            content = value
        certs: list[bytes] = []
        if not isinstance(sd["certificates"], core.Void):
            for choice in sd["certificates"]:
                if len(certs) >= EFI_AUTH_MAX_CERTIFICATES:
                    raise LimitError(
                        f"SignedData carries more than {EFI_AUTH_MAX_CERTIFICATES} certificates"
                    )
                if choice.name != "certificate":
                    raise FormatError(f"SignedData: certificate choice {choice.name!r}")
                certs.append(bytes(choice.chosen.dump()))
        infos = list(sd["signer_infos"])
        if not 1 <= len(infos) <= _MAX_SIGNERS:
            raise FormatError(f"SignedData: {len(infos)} signers, expected 1 to {_MAX_SIGNERS}")
        signers = tuple(_signer_info(si) for si in infos)
        return cls(version, digests, _oid(encap["content_type"]), content, tuple(certs), signers)


def _signer_info(si: cms.SignerInfo) -> SignerInfo:
    version = _small_int(si["version"], "SignerInfo version")
    issuer, serial, skid = b"", 0, b""
    sid = si["sid"]
    if sid.name == "issuer_and_serial_number":
        issuer = bytes(sid.chosen["issuer"].dump())
        if not sid.chosen["serial_number"].contents:
            raise FormatError("SignedData: bad IssuerAndSerialNumber")
        serial = int(sid.chosen["serial_number"].native)
    else:
        skid = bytes(sid.chosen.native)
        if not skid:
            raise FormatError("SignedData: empty subjectKeyIdentifier")
    digest = _alg_oid(si["digest_algorithm"], "signer digest algorithm")
    raw_attrs = b""
    attrs: list[Attribute] = []
    if not isinstance(si["signed_attrs"], core.Void):
        raw_attrs = bytes(si["signed_attrs"].contents)
        if not raw_attrs:
            raise FormatError("SignedData: empty signed attributes")
        for attr in si["signed_attrs"]:
            if len(attrs) >= _MAX_ATTRIBUTES:
                raise FormatError(f"SignedData: more than {_MAX_ATTRIBUTES} signed attributes")
            values = tuple(bytes(v.dump()) for v in attr["values"])
            attrs.append(Attribute(_oid(attr["type"]), values))
    sig_oid = _alg_oid(si["signature_algorithm"], "signature algorithm")
    signature = bytes(si["signature"].native)
    return SignerInfo(
        version, issuer, serial, skid, digest, raw_attrs, tuple(attrs), sig_oid, signature
    )
