"""PKCS#7 / CMS SignedData (RFC 2315, RFC 5652): a bounded DER codec for one-signer blobs.

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

Pure: bytes in, frozen objects out. The verifier (which key, which digest, what the
attributes must say) is :mod:`bastion.trust.secureboot`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.errors import FormatError, LimitError
from bastion.formats.modsig import der_int, der_read, der_tlv
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


def _children(data: bytes, start: int, end: int, what: str) -> list[tuple[int, int, int, int]]:
    """(tag, element_start, content_start, content_end) of each child in [start, end)."""
    out = []
    pos = start
    window = data[:end]
    while pos < end:
        tag, cs, ce = der_read(window, pos)
        out.append((tag, pos, cs, ce))
        pos = ce
        if len(out) > 64:
            raise FormatError(f"{what}: more than 64 elements")
    return out


def _alg_oid(data: bytes, start: int, end: int, what: str) -> bytes:
    """The OID of an AlgorithmIdentifier whose parameters are absent or NULL."""
    kids = _children(data, start, end, what)
    if not kids or kids[0][0] != 0x06 or len(kids) > 2:
        raise FormatError(f"SignedData: {what} is not an AlgorithmIdentifier")
    if len(kids) == 2 and (kids[1][0] != 0x05 or kids[1][2] != kids[1][3]):
        raise FormatError(f"SignedData: {what} parameters must be absent or NULL")
    return data[kids[0][2] : kids[0][3]]


def _alg(oid: bytes) -> bytes:
    return der_tlv(0x30, der_tlv(0x06, oid) + b"\x05\x00")


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
        content = der_tlv(0x06, self.content_type)
        if self.content is not None:
            content += der_tlv(0xA0, der_tlv(0x04, self.content))
        body = der_int(self.version)
        body += der_tlv(0x31, b"".join(_alg(o) for o in self.digest_oids))
        body += der_tlv(0x30, content)
        if self.certificates:
            body += der_tlv(0xA0, b"".join(self.certificates))
        infos = b""
        for si in self.signer_infos:
            if si.subject_key_id:
                sid = der_tlv(0x80, si.subject_key_id)
            else:
                sid = der_tlv(0x30, si.issuer + der_int(si.serial))
            attrs = der_tlv(0xA0, si.signed_attributes) if si.signed_attributes else b""
            infos += der_tlv(
                0x30,
                der_int(si.version)
                + sid
                + _alg(si.digest_oid)
                + attrs
                + _alg(si.signature_oid)
                + der_tlv(0x04, si.signature),
            )
        body += der_tlv(0x31, infos)
        return der_tlv(0x30, body)

    @classmethod
    def parse(cls, data: bytes, *, allow_content_info: bool = False) -> SignedData:
        """Decode a bare SignedData (or, if allowed, one wrapped in a ContentInfo)."""
        if len(data) > EFI_AUTH_CERT_MAX_SIZE:
            raise LimitError(f"SignedData is {len(data)} bytes, limit {EFI_AUTH_CERT_MAX_SIZE}")
        tag, start, end = der_read(data, 0)
        if tag != 0x30:
            raise FormatError(f"SignedData: expected a SEQUENCE, got tag 0x{tag:02x}")
        if end != len(data):
            raise FormatError(f"SignedData: {len(data) - end} trailing bytes")
        parts = _children(data, start, end, "SignedData")
        if allow_content_info and parts and parts[0][0] == 0x06:
            if len(parts) != 2 or parts[1][0] != 0xA0:
                raise FormatError("ContentInfo must be (OID, [0] content)")
            if data[parts[0][2] : parts[0][3]] != OID_SIGNED_DATA:
                raise FormatError("ContentInfo: content type is not signedData")
            return cls.parse(data[parts[1][2] : parts[1][3]])
        if len(parts) < 4 or [p[0] for p in parts[:3]] != [0x02, 0x31, 0x30]:
            raise FormatError("SignedData must be (version, digestAlgorithms, contentInfo, ...)")
        version = _small_int(data, parts[0], "SignedData version")
        digest_list = []
        for d in _children(data, parts[1][2], parts[1][3], "digestAlgorithms"):
            if d[0] != 0x30:
                raise FormatError(f"SignedData: digest algorithm tag 0x{d[0]:02x}")
            digest_list.append(_alg_oid(data, d[2], d[3], "digest algorithm"))
        digests = tuple(digest_list)
        ci = _children(data, parts[2][2], parts[2][3], "contentInfo")
        if not ci or ci[0][0] != 0x06 or len(ci) > 2:
            raise FormatError("SignedData: contentInfo must be (OID [, [0] content])")
        content_type = data[ci[0][2] : ci[0][3]]
        content: bytes | None = None
        if len(ci) == 2:
            if ci[1][0] != 0xA0:
                raise FormatError("SignedData: contentInfo content is not [0]")
            inner = _children(data, ci[1][2], ci[1][3], "content")
            if len(inner) != 1 or inner[0][0] != 0x04:
                raise FormatError("SignedData: content must be one OCTET STRING")
            content = data[inner[0][2] : inner[0][3]]
        certs: tuple[bytes, ...] = ()
        rest = parts[3:]
        if rest and rest[0][0] == 0xA0:
            kids = _children(data, rest[0][2], rest[0][3], "certificates")
            if len(kids) > EFI_AUTH_MAX_CERTIFICATES:
                raise LimitError(
                    f"SignedData carries {len(kids)} certificates, "
                    f"limit {EFI_AUTH_MAX_CERTIFICATES}"
                )
            for k in kids:
                if k[0] != 0x30:
                    raise FormatError(f"SignedData: certificate tag 0x{k[0]:02x}")
            certs = tuple(data[k[1] : k[3]] for k in kids)
            rest = rest[1:]
        if rest and rest[0][0] == 0xA1:
            rest = rest[1:]  # CRLs: not used by UEFI, ignored
        if len(rest) != 1 or rest[0][0] != 0x31:
            raise FormatError("SignedData: expected signerInfos as the last element")
        infos = _children(data, rest[0][2], rest[0][3], "signerInfos")
        if not 1 <= len(infos) <= _MAX_SIGNERS:
            raise FormatError(f"SignedData: {len(infos)} signers, expected 1 to {_MAX_SIGNERS}")
        signers = tuple(_signer_info(data, i) for i in infos)
        return cls(version, digests, content_type, content, certs, signers)


def _small_int(data: bytes, element: tuple[int, int, int, int], what: str) -> int:
    raw = data[element[2] : element[3]]
    if element[0] != 0x02 or not 1 <= len(raw) <= 2:
        raise FormatError(f"{what} is not a small INTEGER")
    return int.from_bytes(raw, "big", signed=True)


def _signer_info(data: bytes, element: tuple[int, int, int, int]) -> SignerInfo:
    tag, _, start, end = element
    if tag != 0x30:
        raise FormatError(f"SignedData: SignerInfo tag 0x{tag:02x}")
    f = _children(data, start, end, "SignerInfo")
    if len(f) < 5:
        raise FormatError(f"SignedData: SignerInfo has {len(f)} fields, expected 5 to 7")
    version = _small_int(data, f[0], "SignerInfo version")
    issuer, serial, skid = b"", 0, b""
    if f[1][0] == 0x30:
        sid = _children(data, f[1][2], f[1][3], "IssuerAndSerialNumber")
        if len(sid) != 2 or sid[0][0] != 0x30 or sid[1][0] != 0x02 or sid[1][2] == sid[1][3]:
            raise FormatError("SignedData: bad IssuerAndSerialNumber")
        issuer = data[sid[0][1] : sid[0][3]]
        serial = int.from_bytes(data[sid[1][2] : sid[1][3]], "big", signed=True)
    elif f[1][0] == 0x80:
        skid = data[f[1][2] : f[1][3]]
        if not skid:
            raise FormatError("SignedData: empty subjectKeyIdentifier")
    else:
        raise FormatError(f"SignedData: signer id tag 0x{f[1][0]:02x}")
    if f[2][0] != 0x30:
        raise FormatError("SignedData: SignerInfo digestAlgorithm missing")
    digest = _alg_oid(data, f[2][2], f[2][3], "signer digest algorithm")
    idx = 3
    raw_attrs = b""
    attrs: tuple[Attribute, ...] = ()
    if f[idx][0] == 0xA0:
        raw_attrs = data[f[idx][2] : f[idx][3]]
        if not raw_attrs:
            raise FormatError("SignedData: empty signed attributes")
        attrs = _attributes(data, f[idx][2], f[idx][3])
        idx += 1
    if len(f) < idx + 2 or f[idx][0] != 0x30 or f[idx + 1][0] != 0x04:
        raise FormatError("SignedData: SignerInfo signatureAlgorithm/signature missing")
    sig_oid = _alg_oid(data, f[idx][2], f[idx][3], "signature algorithm")
    signature = data[f[idx + 1][2] : f[idx + 1][3]]
    extra = f[idx + 2 :]
    if len(extra) > 1 or (extra and extra[0][0] != 0xA1):
        raise FormatError("SignedData: unexpected fields after the signature")
    return SignerInfo(version, issuer, serial, skid, digest, raw_attrs, attrs, sig_oid, signature)


def _attributes(data: bytes, start: int, end: int) -> tuple[Attribute, ...]:
    out = []
    for tag, _, cs, ce in _children(data, start, end, "signed attributes"):
        if tag != 0x30:
            raise FormatError(f"SignedData: attribute tag 0x{tag:02x}")
        kids = _children(data, cs, ce, "attribute")
        if len(kids) != 2 or kids[0][0] != 0x06 or kids[1][0] != 0x31:
            raise FormatError("SignedData: attribute must be (OID, SET OF values)")
        values = tuple(
            data[v[1] : v[3]] for v in _children(data, kids[1][2], kids[1][3], "attribute values")
        )
        out.append(Attribute(data[kids[0][2] : kids[0][3]], values))
        if len(out) > _MAX_ATTRIBUTES:
            raise FormatError(f"SignedData: more than {_MAX_ATTRIBUTES} signed attributes")
    return tuple(out)
