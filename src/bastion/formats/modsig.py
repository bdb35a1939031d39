"""Linux kernel module signatures: the appended PKCS#7 signature and its trailer.

A signed module is::

    module bytes || PKCS#7 SignedData (DER) || struct module_signature || MAGIC

``struct module_signature`` (include/linux/module_signature.h) is 12 bytes: ``u8 algo,
hash, id_type, signer_len, key_id_len; u8 pad[3]; __be32 sig_len``. For PKCS#7
signatures the kernel wants ``id_type = 2`` (PKEY_ID_PKCS7) and every other field but
``sig_len`` zero, and ``MAGIC = "~Module signature appended~\\n"``.

The SignedData is what ``scripts/sign-file`` makes with OpenSSL's CMS (NOCERTS,
DETACHED, BINARY, NOATTR): version 1, one digest algorithm (parameters absent),
detached ``data`` content, no certificates, one SignerInfo naming the signer by
issuer and serial number, no signed attributes, ``rsaEncryption`` (NULL parameters)
and the RSA PKCS#1 v1.5 signature over the module bytes. With an EC key sign-file
writes ``ecdsa-with-SHA*`` (no parameters) and a DER ECDSA-Sig-Value; with ``-k`` it
names the signer by the certificate's subjectKeyIdentifier (``[0]`` in the SignerInfo,
CMS version 3 in both SignerInfo and SignedData) instead of issuer and serial.
:class:`CmsSignature` encodes exactly those bytes (``cryptography``'s PKCS#7 builder
writes NULL digest parameters and so differs from sign-file) and decodes them with a
small bounded DER reader. Signed attributes are refused.

Hashes: sha256, sha384 and sha512 are accepted. md4 and md5 are refused by name (the
kernel's PKCS#7 parser has no entry for them and answers ENOPKG); sha1 is refused by
name too: the kernel's parser still lists it, bastion does not sign or trust it.

Pure: bytes in, frozen objects out. :func:`sign_module` takes the signing operation
as a callable so private keys never enter this module; :func:`verify_module` checks
with the certificate's public key through ``cryptography``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from bastion.errors import ConflictError, FormatError, LimitError, SignatureError
from bastion.limits import MODSIG_MAX_SIG_SIZE

MAGIC = b"~Module signature appended~\n"
PKEY_ID_PKCS7 = 2
TRAILER_SIZE = 12

_OID_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")
_OID_DATA = bytes.fromhex("2a864886f70d010701")
_OID_RSA = bytes.fromhex("2a864886f70d010101")
HASH_OIDS: dict[str, bytes] = {
    "sha256": bytes.fromhex("608648016503040201"),
    "sha384": bytes.fromhex("608648016503040202"),
    "sha512": bytes.fromhex("608648016503040203"),
}
_RSA_WITH_HASH = {
    bytes.fromhex("2a864886f70d01010b"): "sha256",
    bytes.fromhex("2a864886f70d01010c"): "sha384",
    bytes.fromhex("2a864886f70d01010d"): "sha512",
}
#: digests bastion refuses by name (see the module docstring for the kernel's view)
REFUSED_HASH_OIDS: dict[bytes, str] = {
    bytes.fromhex("2a864886f70d0204"): "md4",
    bytes.fromhex("2a864886f70d0205"): "md5",
    bytes.fromhex("2b0e03021a"): "sha1",
}
_ECDSA_WITH_HASH = {
    bytes.fromhex("2a8648ce3d040302"): "sha256",
    bytes.fromhex("2a8648ce3d040303"): "sha384",
    bytes.fromhex("2a8648ce3d040304"): "sha512",
}
_ECDSA_OIDS = {name: oid for oid, name in _ECDSA_WITH_HASH.items()}
_REFUSED_SIG_OIDS = {
    bytes.fromhex("2a864886f70d010104"): "md5",  # md5WithRSAEncryption
    bytes.fromhex("2a864886f70d010105"): "sha1",  # sha1WithRSAEncryption
    bytes.fromhex("2a8648ce3d0401"): "sha1",  # ecdsa-with-SHA1
}
#: curves the kernel's ecdsa verifier takes and bastion accepts for module keys
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")
ALGO_RSA = "rsa"
ALGO_ECDSA = "ecdsa"
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_MAX_DER_DEPTH = 16


# --- a minimal DER writer and reader -----------------------------------------------------


def der_tlv(tag: int, content: bytes) -> bytes:
    """Encode one DER element with a definite, minimal length."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def der_int(value: int) -> bytes:
    """Encode an INTEGER (two's complement, minimal)."""
    size = (value.bit_length() + 8) // 8 if value >= 0 else ((~value).bit_length() + 8) // 8
    return der_tlv(0x02, value.to_bytes(max(size, 1), "big", signed=True))


def der_read(data: bytes, offset: int = 0) -> tuple[int, int, int]:
    """Read one element at ``offset``: ``(tag, content_start, content_end)``.

    Only single-byte tags and definite minimal lengths (DER); FormatError otherwise.
    """
    if offset + 2 > len(data):
        raise FormatError(f"DER: truncated element header at offset {offset}")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise FormatError(f"DER: multi-byte tag at offset {offset} is not supported")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise FormatError(f"DER: indefinite length at offset {offset}")
        if count > 4 or pos + count > len(data):
            raise FormatError(f"DER: bad length of length ({count}) at offset {offset}")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise FormatError(f"DER: non-minimal length at offset {offset}")
        pos += count
    end = pos + length
    if end > len(data):
        raise FormatError(
            f"DER: element at offset {offset} claims {length} bytes, {len(data) - pos} remain"
        )
    return tag, pos, end


def _expect(data: bytes, offset: int, tag: int, what: str) -> tuple[int, int]:
    actual, start, end = der_read(data, offset)
    if actual != tag:
        raise FormatError(f"module signature: {what}: expected tag 0x{tag:02x}, got 0x{actual:02x}")
    return start, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element_start, content_start, content_end) of each child in [start, end)."""
    out = []
    pos = start
    while pos < end:
        tag, cs, ce = der_read(data[:end], pos)
        out.append((tag, pos, cs, ce))
        pos = ce
    return out


def _alg_id(data: bytes, start: int, end: int, what: str) -> tuple[bytes, bool]:
    """(OID content bytes, has NULL parameters) of an AlgorithmIdentifier content."""
    kids = _children(data, start, end)
    if not kids or kids[0][0] != 0x06 or len(kids) > 2:
        raise FormatError(f"module signature: {what} is not an AlgorithmIdentifier")
    has_null = False
    if len(kids) == 2:
        tag, _, cs, ce = kids[1]
        if tag != 0x05 or cs != ce:
            raise FormatError(f"module signature: {what} parameters must be absent or NULL")
        has_null = True
    return data[kids[0][2] : kids[0][3]], has_null


def _hash_name(oid: bytes, what: str) -> str:
    for name, value in HASH_OIDS.items():
        if value == oid:
            return name
    if oid in REFUSED_HASH_OIDS:
        raise FormatError(
            f"module signature: {what} {REFUSED_HASH_OIDS[oid]} is refused "
            "(weak hash; accepted: sha256, sha384, sha512)"
        )
    raise FormatError(f"module signature: {what} {oid.hex()} is not sha256/sha384/sha512")


# --- the CMS SignedData ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CmsSignature:
    """The one-signer, detached, attribute-less PKCS#7 SignedData of a signed module.

    ``issuer`` is the DER Name of the signer certificate's issuer, ``serial`` its serial
    number; or, when ``subject_key_id`` is set (sign-file ``-k``), the signer is named by
    that subjectKeyIdentifier and ``issuer``/``serial`` are empty/0. ``key_algorithm`` is
    ``rsa`` (``signature`` is RSA PKCS#1 v1.5) or ``ecdsa`` (a DER ECDSA-Sig-Value).
    """

    hash_name: str
    issuer: bytes
    serial: int
    signature: bytes
    key_algorithm: str = ALGO_RSA
    subject_key_id: bytes = b""

    def __post_init__(self) -> None:
        if self.hash_name not in HASH_OIDS:
            raise FormatError(f"hash {self.hash_name!r}: expected one of {sorted(HASH_OIDS)}")
        if self.key_algorithm not in (ALGO_RSA, ALGO_ECDSA):
            raise FormatError(f"module signature key algorithm {self.key_algorithm!r}")

    @property
    def version(self) -> int:
        """CMS version: 1 for issuer and serial, 3 for a subjectKeyIdentifier signer."""
        return 3 if self.subject_key_id else 1

    def to_bytes(self) -> bytes:
        """DER, byte-identical to sign-file's output for the same inputs."""
        digest_alg = der_tlv(0x30, der_tlv(0x06, HASH_OIDS[self.hash_name]))
        if self.subject_key_id:
            sid = der_tlv(0x80, self.subject_key_id)
        else:
            sid = der_tlv(0x30, self.issuer + der_int(self.serial))
        if self.key_algorithm == ALGO_ECDSA:
            sig_alg = der_tlv(0x30, der_tlv(0x06, _ECDSA_OIDS[self.hash_name]))
        else:
            sig_alg = der_tlv(0x30, der_tlv(0x06, _OID_RSA) + b"\x05\x00")
        signer_info = der_tlv(
            0x30,
            der_int(self.version) + sid + digest_alg + sig_alg + der_tlv(0x04, self.signature),
        )
        signed_data = der_tlv(
            0x30,
            der_int(self.version)
            + der_tlv(0x31, digest_alg)
            + der_tlv(0x30, der_tlv(0x06, _OID_DATA))
            + der_tlv(0x31, signer_info),
        )
        return der_tlv(0x30, der_tlv(0x06, _OID_SIGNED_DATA) + der_tlv(0xA0, signed_data))

    @classmethod
    def parse(cls, data: bytes) -> CmsSignature:
        """Decode the SignedData; FormatError for anything sign-file would not make."""
        if len(data) > MODSIG_MAX_SIG_SIZE:
            raise LimitError(f"module signature is {len(data)} bytes, limit {MODSIG_MAX_SIG_SIZE}")
        start, end = _expect(data, 0, 0x30, "ContentInfo")
        if end != len(data):
            raise FormatError("module signature: trailing bytes after the ContentInfo")
        kids = _children(data, start, end)
        if len(kids) != 2 or kids[0][0] != 0x06 or kids[1][0] != 0xA0:
            raise FormatError("module signature: ContentInfo must be (OID, [0] content)")
        if data[kids[0][2] : kids[0][3]] != _OID_SIGNED_DATA:
            raise FormatError("module signature: content type is not signedData")
        sd_start, sd_end = _expect(data[: kids[1][3]], kids[1][2], 0x30, "SignedData")
        if sd_end != kids[1][3]:
            raise FormatError("module signature: trailing bytes in [0] content")
        parts = _children(data, sd_start, sd_end)
        if len(parts) < 4 or [p[0] for p in parts[:3]] != [0x02, 0x31, 0x30]:
            raise FormatError(
                "module signature: SignedData must be (version, digests, content, ...)"
            )
        sd_version = data[parts[0][2] : parts[0][3]]
        if sd_version not in (b"\x01", b"\x03"):
            raise FormatError(
                f"module signature: SignedData version {sd_version.hex()}, expected 1 or 3"
            )
        digests = _children(data, parts[1][2], parts[1][3])
        if len(digests) != 1 or digests[0][0] != 0x30:
            raise FormatError("module signature: expected exactly one digest algorithm")
        set_hash = _hash_name(_alg_id(data, digests[0][2], digests[0][3], "digest")[0], "digest")
        content = _children(data, parts[2][2], parts[2][3])
        if len(content) != 1 or content[0][0] != 0x06:
            raise FormatError("module signature: content must be detached (no eContent)")
        if data[content[0][2] : content[0][3]] != _OID_DATA:
            raise FormatError("module signature: content type is not data")
        rest = parts[3:]
        # optional [0] certificates and [1] crls are skipped; the last element is signerInfos
        for tag, *_ in rest[:-1]:
            if tag not in (0xA0, 0xA1):
                raise FormatError(f"module signature: unexpected SignedData field 0x{tag:02x}")
        if rest[-1][0] != 0x31:
            raise FormatError("module signature: signerInfos SET missing")
        infos = _children(data, rest[-1][2], rest[-1][3])
        if len(infos) != 1 or infos[0][0] != 0x30:
            raise FormatError(f"module signature: expected exactly 1 signer, got {len(infos)}")
        parsed = cls._signer_info(data, infos[0][2], infos[0][3], set_hash)
        if sd_version[0] != parsed.version:
            raise FormatError(
                f"module signature: SignedData version {sd_version[0]} does not fit a "
                f"version {parsed.version} SignerInfo"
            )
        return parsed

    @classmethod
    def _signer_info(cls, data: bytes, start: int, end: int, set_hash: str) -> CmsSignature:
        f = _children(data, start, end)
        if len(f) != 5:
            raise FormatError(
                "module signature: SignerInfo must be (version, sid, digest, sigalg, sig): "
                "signed or unsigned attributes are not supported"
            )
        version = data[f[0][2] : f[0][3]] if f[0][0] == 0x02 else b""
        issuer, serial, skid = b"", 0, b""
        if version == b"\x01":
            if f[1][0] != 0x30:
                raise FormatError("module signature: signer id is not IssuerAndSerialNumber")
            sid = _children(data, f[1][2], f[1][3])
            if len(sid) != 2 or sid[0][0] != 0x30 or sid[1][0] != 0x02:
                raise FormatError("module signature: bad IssuerAndSerialNumber")
            issuer = data[sid[0][1] : sid[0][3]]
            serial_bytes = data[sid[1][2] : sid[1][3]]
            if not serial_bytes:
                raise FormatError("module signature: empty serial number")
            serial = int.from_bytes(serial_bytes, "big", signed=True)
        elif version == b"\x03":
            if f[1][0] != 0x80:
                raise FormatError("module signature: version 3 signer id is not [0] keyid")
            skid = data[f[1][2] : f[1][3]]
            if not skid:
                raise FormatError("module signature: empty subjectKeyIdentifier")
        else:
            raise FormatError(
                "module signature: SignerInfo version must be 1 (issuer and serial number) "
                "or 3 (subjectKeyIdentifier)"
            )
        if f[2][0] != 0x30:
            raise FormatError("module signature: digestAlgorithm missing")
        hash_name = _hash_name(_alg_id(data, f[2][2], f[2][3], "digest")[0], "digest")
        if hash_name != set_hash:
            raise FormatError(
                f"module signature: signer digest {hash_name} differs from SignedData's {set_hash}"
            )
        if f[3][0] != 0x30:
            raise FormatError("module signature: signatureAlgorithm missing")
        sig_oid, has_null = _alg_id(data, f[3][2], f[3][3], "signature algorithm")
        if sig_oid in _REFUSED_SIG_OIDS:
            raise FormatError(
                f"module signature: signature algorithm with {_REFUSED_SIG_OIDS[sig_oid]} "
                "is refused (weak hash)"
            )
        if sig_oid in _ECDSA_WITH_HASH:
            algo = ALGO_ECDSA
            if _ECDSA_WITH_HASH[sig_oid] != hash_name or has_null:
                raise FormatError(
                    f"module signature: ecdsa-with-{_ECDSA_WITH_HASH[sig_oid]} (parameters "
                    f"must be absent) does not fit digest {hash_name}"
                )
        elif sig_oid == _OID_RSA or _RSA_WITH_HASH.get(sig_oid) == hash_name:
            algo = ALGO_RSA
        else:
            raise FormatError(
                f"module signature: signature algorithm {sig_oid.hex()} is not RSA or ECDSA "
                f"with {hash_name}"
            )
        if f[4][0] != 0x04:
            raise FormatError("module signature: signature is not an OCTET STRING")
        return cls(hash_name, issuer, serial, data[f[4][2] : f[4][3]], algo, skid)


# --- the trailer and the whole signed module ---------------------------------------------


@dataclass(frozen=True, slots=True)
class ModuleSignatureInfo:
    """``struct module_signature``; the kernel accepts only the PKCS#7 form."""

    sig_len: int
    algo: int = 0
    hash: int = 0
    id_type: int = PKEY_ID_PKCS7
    signer_len: int = 0
    key_id_len: int = 0
    pad: bytes = b"\0\0\0"

    def to_bytes(self) -> bytes:
        """The 12 trailer bytes."""
        return struct.pack(
            ">BBBBB3sI",
            self.algo,
            self.hash,
            self.id_type,
            self.signer_len,
            self.key_id_len,
            self.pad,
            self.sig_len,
        )

    @classmethod
    def parse(cls, data: bytes) -> ModuleSignatureInfo:
        """Decode and check as the kernel's ``mod_check_sig`` does."""
        if len(data) != TRAILER_SIZE:
            raise FormatError(f"module_signature is {len(data)} bytes, expected {TRAILER_SIZE}")
        algo, hsh, id_type, signer_len, key_id_len, pad, sig_len = struct.unpack(">BBBBB3sI", data)
        if id_type != PKEY_ID_PKCS7:
            raise FormatError(f"module signature id_type is {id_type}, expected 2 (PKCS#7)")
        if algo or hsh or signer_len or key_id_len or pad != b"\0\0\0":
            raise FormatError("module signature: PKCS#7 trailer has unexpected non-zero fields")
        if sig_len == 0 or sig_len > MODSIG_MAX_SIG_SIZE:
            raise LimitError(
                f"module signature length {sig_len}: expected 1..{MODSIG_MAX_SIG_SIZE}"
            )
        return cls(sig_len)


@dataclass(frozen=True, slots=True)
class SignedModule:
    """A module split into its bytes, its SignedData DER and its trailer."""

    module: bytes
    signature: bytes

    @property
    def info(self) -> ModuleSignatureInfo:
        """The trailer for this signature."""
        return ModuleSignatureInfo(len(self.signature))

    def cms(self) -> CmsSignature:
        """The decoded SignedData."""
        return CmsSignature.parse(self.signature)

    def to_bytes(self) -> bytes:
        """module || signature || trailer || MAGIC."""
        return self.module + self.signature + self.info.to_bytes() + MAGIC

    @classmethod
    def parse(cls, data: bytes) -> SignedModule:
        """Split a signed module; FormatError if it is not one (copies the module once)."""
        split, end = _split_offsets(data)
        return cls(data[:split], data[split:end])


def _split_offsets(data: bytes) -> tuple[int, int]:
    """(start of the signature, end of the signature) in a signed module."""
    if not data.endswith(MAGIC):
        raise FormatError("module is not signed: the signature magic is missing")
    end = len(data) - len(MAGIC) - TRAILER_SIZE
    if end < 0:
        raise FormatError("signed module is truncated before its trailer")
    info = ModuleSignatureInfo.parse(data[end : end + TRAILER_SIZE])
    if info.sig_len > end:
        raise FormatError(f"module signature claims {info.sig_len} bytes, only {end} precede it")
    return end - info.sig_len, end


def is_signed(data: bytes) -> bool:
    """True when ``data`` ends with the module signature magic."""
    return data.endswith(MAGIC)


def _key_algorithm(certificate: x509.Certificate) -> str:
    """``rsa`` or ``ecdsa`` for a module-signing certificate (FormatError otherwise)."""
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return ALGO_RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            raise FormatError(
                f"module signing certificate curve {key.curve.name}: expected one of {EC_CURVES}"
            )
        return ALGO_ECDSA
    raise FormatError(
        f"module signing certificate holds a {type(key).__name__}: expected RSA or EC"
    )


def certificate_key_id(certificate: x509.Certificate) -> bytes:
    """The certificate's subjectKeyIdentifier extension (FormatError when it has none)."""
    try:
        ext = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as exc:
        raise FormatError("module signing certificate has no subjectKeyIdentifier") from exc
    return ext.value.digest


def sign_module(
    module: bytes,
    certificate: x509.Certificate,
    sign: Callable[[bytes], bytes],
    hash_name: str = "sha256",
    *,
    use_key_id: bool = False,
) -> bytes:
    """Append a signature: ``sign(module)`` signs with the certificate's key over ``hash_name``.

    RSA keys: ``sign`` returns RSA PKCS#1 v1.5; EC keys: a DER ECDSA signature. With
    ``use_key_id`` the signer is named by subjectKeyIdentifier (sign-file ``-k``). The new
    signature is checked with the certificate before it is returned; ConflictError if
    ``module`` is already signed.
    """
    if is_signed(module):
        raise ConflictError("module is already signed")
    algo = _key_algorithm(certificate)
    skid = certificate_key_id(certificate) if use_key_id else b""
    cms = CmsSignature(
        hash_name,
        b"" if skid else certificate.issuer.public_bytes(),
        0 if skid else certificate.serial_number,
        sign(module),
        algo,
        skid,
    )
    _check_signature(certificate, cms, module)
    der = cms.to_bytes()
    return b"".join((module, der, ModuleSignatureInfo(len(der)).to_bytes(), MAGIC))


def _check_signature(certificate: x509.Certificate, cms: CmsSignature, module: bytes) -> None:
    key = certificate.public_key()
    algorithm = _HASHES[cms.hash_name]()
    try:
        if cms.key_algorithm == ALGO_RSA and isinstance(key, rsa.RSAPublicKey):
            key.verify(cms.signature, module, padding.PKCS1v15(), algorithm)
        elif cms.key_algorithm == ALGO_ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            _key_algorithm(certificate)  # the curve must be one bastion accepts
            key.verify(cms.signature, module, ec.ECDSA(algorithm))
        else:
            raise SignatureError(
                f"module signature is {cms.key_algorithm} but the certificate holds a "
                f"{type(key).__name__}"
            )
    except InvalidSignature as exc:
        raise SignatureError(
            f"module signature ({cms.hash_name}, {cms.key_algorithm}) does not verify with "
            "the certificate"
        ) from exc
    except FormatError as exc:
        raise SignatureError(f"module signature: {exc}") from exc


def _check_signer(certificate: x509.Certificate, cms: CmsSignature) -> None:
    if cms.subject_key_id:
        try:
            expected = certificate_key_id(certificate)
        except FormatError as exc:
            raise SignatureError(
                "module names its signer by subjectKeyIdentifier but the certificate has none"
            ) from exc
        if cms.subject_key_id != expected:
            raise SignatureError(
                f"module was signed by key id {cms.subject_key_id.hex()}, the certificate's "
                f"is {expected.hex()}"
            )
        return
    if cms.issuer != certificate.issuer.public_bytes() or cms.serial != certificate.serial_number:
        raise SignatureError(
            "module was signed by another certificate: signer serial "
            f"{cms.serial:x} vs certificate serial {certificate.serial_number:x} "
            "(or a different issuer)"
        )


def verify_module(data: bytes, certificate: x509.Certificate) -> SignedModule:
    """Check a signed module against ``certificate``; SignatureError or FormatError."""
    split, end = _split_offsets(data)
    cms = CmsSignature.parse(data[split:end])
    _check_signer(certificate, cms)
    module = data[:split]
    _check_signature(certificate, cms, module)
    return SignedModule(module, data[split:end])
