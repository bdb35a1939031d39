"""UEFI Secure Boot with the product's own keys: PK/KEK/db certificates and signed updates.

The key hierarchy (docs/secureboot.md, ADR 0017):

======= =========== ======= ============================================================
role    key         lives   signs
======= =========== ======= ============================================================
PK      RSA-2048    offline updates of PK (itself) and KEK
KEK     RSA-2048    offline updates of db and dbx
db      RSA-2048    build   boot artefacts (UKI, systemd-boot) through Authenticode
======= =========== ======= ============================================================

Certificates are self-signed (each is its own trust anchor in the firmware variable),
RSA-2048 with SHA-256, which every UEFI implementation verifies.

:func:`sign_update` makes an ``EFI_VARIABLE_AUTHENTICATION_2`` update (a ``.auth``
file): it signs :func:`~bastion.formats.efivars.signable_bytes` through a
:class:`~bastion.trust.signer.Signer` (keys by URI; a TPM key works as well as a file)
and wraps the signature in the bare PKCS#7 SignedData firmware wants
(:class:`~bastion.formats.pkcs7_signed.SignedData`). :func:`verify_update` checks one
the way edk2 does, with bastion's rules (fail closed):

* PK is signed by the current PK, or, when no PK is given (setup mode), by the PK the
  update itself carries (the self-signed first enrolment);
* KEK is signed by the PK; db and dbx are signed by a KEK certificate (a PK-signed db
  or dbx is refused, though edk2 2022.11 takes one: the offline PK signs only PK, KEK);
* the signer is one of those certificates, included byte-identical in the SignedData
  and named by issuer and serial number (or key id); nothing else in the SignedData is
  trusted, no chains; SignedData and SignerInfo versions 1 (3 for a key-id signer);
* SHA-256 only; RSA PKCS#1 v1.5; signed attributes, when present (``sbvarsign``), must
  name content type ``data`` and carry the SHA-256 of the signed bytes;
* the timestamp has Pad1, Nanosecond, TimeZone, Daylight and Pad2 zero, and is later
  than the variable's current one unless the write appends;
* the data is well-formed signature lists of the types each variable allows (PK: one
  X.509 certificate; KEK: X.509; db and dbx: X.509 or SHA-256).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    RollbackError,
    SignatureError,
    VerificationError,
)
from bastion.formats.efivars import (
    AUTHENTICATED_ATTRIBUTES,
    EFI_CERT_SHA256_GUID,
    EFI_CERT_X509_GUID,
    SECURE_BOOT_VARIABLES,
    Attribute,
    AuthenticatedVariable,
    EfiTime,
    SignatureList,
    encode_signature_lists,
    parse_signature_lists,
    signable_bytes,
)
from bastion.formats.modsig import der_read, der_tlv
from bastion.formats.pkcs7_signed import (
    OID_CONTENT_TYPE,
    OID_DATA,
    OID_MESSAGE_DIGEST,
    OID_RSA,
    OID_SHA256,
    OID_SHA256_WITH_RSA,
    SignedData,
    SignerInfo,
)
from bastion.trust import pki
from bastion.trust.cms import certificate_der
from bastion.trust.signer import SignatureScheme, Signer, Verifier

if TYPE_CHECKING:
    from bastion.trust.keyset import KeySet

#: key set roles of the Secure Boot keys, by variable
ROLES = {"PK": "secureboot-pk", "KEK": "secureboot-kek", "db": "secureboot-db"}
VARIABLE_OF_ROLE = {role: variable for variable, role in ROLES.items()}
#: uuid5 namespace of the signature owner GUIDs bastion derives from the PK
OWNER_NAMESPACE = uuid.UUID("6f0b7e36-0c1b-5c1e-9a57-62a5710b0017")
_ALLOWED_TYPES = {
    "PK": (EFI_CERT_X509_GUID,),
    "KEK": (EFI_CERT_X509_GUID,),
    "db": (EFI_CERT_X509_GUID, EFI_CERT_SHA256_GUID),
    "dbx": (EFI_CERT_X509_GUID, EFI_CERT_SHA256_GUID),
}
_SCHEME = SignatureScheme.RSA_PKCS1V15_SHA256
#: what cryptography raises on malformed certificate fields (parsed lazily)
_X509_ERRORS = (
    ValueError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)


def _vendor(name: str) -> uuid.UUID:
    try:
        return SECURE_BOOT_VARIABLES[name]
    except KeyError:
        raise ConfigError(
            f"variable {name!r}: expected one of {sorted(SECURE_BOOT_VARIABLES)}"
        ) from None


def _spki(key: object) -> bytes:
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError("Secure Boot keys and certificates must be RSA")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _subject_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (x509.ExtensionNotFound, *_X509_ERRORS):
        return None


def _subject(cert: x509.Certificate) -> str:
    try:
        return pki.subject_text(cert)
    except ValueError:
        return "<unparsable subject>"


def _describe_signer(sd: SignedData, si: SignerInfo) -> str:
    """Name the signer for an error message (best effort over untrusted bytes)."""
    for der in sd.certificates:
        try:
            cert = x509.load_der_x509_certificate(der)
            if (si.subject_key_id and _subject_key_id(cert) == si.subject_key_id) or (
                not si.subject_key_id
                and _issuer_der(cert) == si.issuer
                and cert.serial_number == si.serial
            ):
                return repr(_subject(cert))
        except (FormatError, *_X509_ERRORS):
            continue
    if si.subject_key_id:
        return f"an absent certificate with key id {si.subject_key_id.hex()}"
    return f"an absent certificate with serial {si.serial:#x}"


def _issuer_der(cert: x509.Certificate) -> bytes:
    """The issuer Name exactly as encoded in the certificate's TBS."""
    tbs = cert.tbs_certificate_bytes
    _, pos, _ = der_read(tbs, 0)
    tag, _, end = der_read(tbs, pos)
    if tag == 0xA0:  # [0] version
        pos = end
        _, _, end = der_read(tbs, pos)
    pos = end  # serial
    _, _, pos = der_read(tbs, pos)  # signature algorithm
    _, _, end = der_read(tbs, pos)
    return tbs[pos:end]


# --- the keys ----------------------------------------------------------------------------


def owner_guid(pk_certificate: x509.Certificate) -> uuid.UUID:
    """The SignatureOwner GUID of a key set: uuid5 over the PK's key id (stable, no state)."""
    spki = pk_certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return uuid.uuid5(OWNER_NAMESPACE, hashlib.sha256(spki).hexdigest())


def create_certificate(
    signer: Signer,
    variable: str,
    product: str,
    *,
    now: dt.datetime | None = None,
    validity: dt.timedelta = dt.timedelta(days=20 * 365),
) -> x509.Certificate:
    """A self-signed RSA-2048 (or larger) SHA-256 certificate for the PK, KEK or db key."""
    if variable not in ROLES:
        raise ConfigError(f"Secure Boot key {variable!r}: expected one of {sorted(ROLES)}")
    public = signer.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < 2048:
        raise ConfigError("Secure Boot keys must be RSA (2048 bits is what firmware expects)")
    t = now or dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, product),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{product} Secure Boot {variable}"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - dt.timedelta(minutes=5))
        .not_valid_after(t + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )
    return pki._sign_cert(builder, _rsa_signer(signer))


def _rsa_signer(signer: Signer) -> Signer:
    if signer.scheme is _SCHEME:
        return signer
    with_scheme = getattr(signer, "with_scheme", None)
    if with_scheme is None:
        raise ConfigError(
            f"Secure Boot signing needs {_SCHEME}, this key signs with {signer.scheme}"
        )
    result: Signer = with_scheme(_SCHEME)
    return result


def certificate_list(owner: uuid.UUID, certificate: x509.Certificate) -> SignatureList:
    """One EFI_SIGNATURE_LIST holding ``certificate`` (``cert-to-efi-sig-list -g OWNER``)."""
    return SignatureList.x509(owner, certificate_der(certificate))


# --- signing -----------------------------------------------------------------------------


def sign_update(
    variable: str,
    data: bytes,
    signer: Signer,
    certificate: x509.Certificate,
    timestamp: EfiTime,
    *,
    append: bool = False,
) -> AuthenticatedVariable:
    """A time-based authenticated write of ``data`` to ``variable`` signed by ``signer``.

    ``certificate`` is the signer's (carried in the SignedData for firmware to match).
    Empty ``data`` deletes the variable (a signed PK deletion returns to setup mode).
    """
    vendor = _vendor(variable)
    if not timestamp.is_authentication_form:
        raise ConfigError(f"timestamp {timestamp}: nanosecond, timezone and daylight must be 0")
    rsa_signer = _rsa_signer(signer)
    if _spki(rsa_signer.public_key()) != _spki(certificate.public_key()):
        raise ConfigError(f"the {variable} signing key does not match the certificate given")
    if data:
        parse_signature_lists(data)
    attributes = int(AUTHENTICATED_ATTRIBUTES | (Attribute.APPEND_WRITE if append else 0))
    signature = rsa_signer.sign(signable_bytes(variable, vendor, attributes, timestamp, data))
    signed = SignedData.detached(
        certificate=certificate_der(certificate),
        issuer=_issuer_der(certificate),
        serial=certificate.serial_number,
        signature=signature,
    )
    return AuthenticatedVariable(timestamp, signed.to_bytes(), data)


# --- verifying ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedUpdate:
    """An authenticated write that passed :func:`verify_update`."""

    variable: str
    vendor: uuid.UUID
    attributes: int
    timestamp: EfiTime
    lists: tuple[SignatureList, ...]
    signer: x509.Certificate


def verify_signed_data(
    signed_data: bytes, content: bytes, trusted: Sequence[x509.Certificate]
) -> x509.Certificate:
    """Check a bare, detached SignedData over ``content``; return the signer's certificate.

    The signer must be byte-identical to one of ``trusted``. Raises FormatError for a
    malformed SignedData and SignatureError / DigestMismatchError when it does not verify.
    """
    sd = SignedData.parse(signed_data)
    if sd.content_type != OID_DATA or sd.content is not None:
        raise SignatureError("auth SignedData: content must be detached data")
    if sd.digest_oids != (OID_SHA256,) or len(sd.signer_infos) != 1:
        raise SignatureError("auth SignedData: expected one SHA-256 signer")
    si = sd.signer_infos[0]
    expected_version = 3 if si.subject_key_id else 1  # RFC 5652 5.1 and 5.3
    if sd.version != expected_version or si.version != expected_version:
        raise SignatureError(
            f"auth SignedData: version {sd.version}/{si.version}, expected {expected_version}"
        )
    if si.digest_oid != OID_SHA256 or si.signature_oid not in (OID_RSA, OID_SHA256_WITH_RSA):
        raise SignatureError("auth SignedData: signer must use RSA PKCS#1 v1.5 with SHA-256")
    # Only certificates byte-identical to a trusted one are ever considered: nothing
    # parsed out of the untrusted SignedData decides anything.
    embedded = set(sd.certificates)
    signer_cert: x509.Certificate | None = None
    for cert in trusted:
        if certificate_der(cert) not in embedded:
            continue
        if si.subject_key_id:
            match = _subject_key_id(cert) == si.subject_key_id
        else:
            match = _issuer_der(cert) == si.issuer and cert.serial_number == si.serial
        if match:
            signer_cert = cert
            break
    if signer_cert is None:
        names = ", ".join(repr(_subject(t)) for t in trusted) or "none"
        raise SignatureError(
            f"signed by {_describe_signer(sd, si)}, expected one of: {names} "
            "(whose certificate must be included)"
        )
    if si.signed_attributes:
        ctype = si.attribute(OID_CONTENT_TYPE)
        if ctype is None or ctype.values != (der_tlv(0x06, OID_DATA),):
            raise SignatureError("auth SignedData: signed contentType is not data")
        digest = si.attribute(OID_MESSAGE_DIGEST)
        expected = der_tlv(0x04, hashlib.sha256(content).digest())
        if digest is None or digest.values != (expected,):
            raise DigestMismatchError(
                "auth SignedData: signed messageDigest differs from the SHA-256 of the update"
            )
        covered = si.signed_attributes_der()
    else:
        covered = content
    try:
        public = signer_cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"auth SignedData: signer key cannot be used: {exc}") from exc
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < 2048:
        raise SignatureError("auth SignedData: signer key is not RSA of 2048 bits or more")
    Verifier.of(public, _SCHEME).verify(covered, si.signature)
    return signer_cert


def verify_update(
    variable: str,
    auth: bytes,
    *,
    pk: x509.Certificate | None,
    kek: Sequence[x509.Certificate] = (),
    append: bool = False,
    current: EfiTime | None = None,
) -> VerifiedUpdate:
    """Verify a ``.auth`` update of ``variable`` against the current PK / KEK certificates.

    ``pk=None`` means setup mode: only a PK update, signed by the PK it installs, passes.
    ``current`` is the variable's stored timestamp (rollback check, skipped on append).
    """
    vendor = _vendor(variable)
    parsed = AuthenticatedVariable.parse(auth)
    lists = parse_signature_lists(parsed.data)
    for sl in lists:
        if sl.signature_type not in _ALLOWED_TYPES[variable]:
            raise VerificationError(
                f"{variable} update holds a signature list of type {sl.signature_type}"
            )
    if not parsed.timestamp.is_authentication_form:
        raise VerificationError(
            f"{variable} update timestamp: Pad1, Nanosecond, TimeZone, Daylight, Pad2 must be 0"
        )
    if current is not None and not append and parsed.timestamp <= current:
        raise RollbackError(
            f"{variable} update timestamp {parsed.timestamp} is not later than the "
            f"current {current}"
        )
    trusted: list[x509.Certificate]
    if variable == "PK":
        if len(lists) > 1 or (lists and len(lists[0].signatures) != 1):
            raise VerificationError("PK update must hold exactly one X.509 certificate")
        if pk is not None:
            trusted = [pk]
        elif lists:
            trusted = [_load(lists[0].signatures[0].data, "the new PK")]
        else:
            raise VerificationError("deleting PK in setup mode: there is no PK to verify with")
    elif variable == "KEK":
        if pk is None:
            raise VerificationError("KEK update: no PK to verify against")
        trusted = [pk]
    else:
        if not kek:
            raise VerificationError(f"{variable} update: no KEK certificate to verify against")
        trusted = list(kek)
    attributes = int(AUTHENTICATED_ATTRIBUTES | (Attribute.APPEND_WRITE if append else 0))
    content = signable_bytes(variable, vendor, attributes, parsed.timestamp, parsed.data)
    signer = verify_signed_data(parsed.signed_data, content, trusted)
    return VerifiedUpdate(variable, vendor, attributes, parsed.timestamp, lists, signer)


def _load(der: bytes, what: str) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        # force the lazily parsed parts now, so a malformed field is a FormatError here
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = cert.extensions
        cert.public_key()
    except _X509_ERRORS as exc:
        raise FormatError(f"{what} is not a well-formed X.509 certificate: {exc}") from exc
    return cert


def certificates_in(lists: Iterable[SignatureList]) -> list[x509.Certificate]:
    """The X.509 certificates of some signature lists (KEK or db contents)."""
    return [
        _load(s.data, "signature list entry")
        for sl in lists
        if sl.signature_type == EFI_CERT_X509_GUID
        for s in sl.signatures
    ]


# --- the enrolment files -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrolment:
    """Everything to put the product's keys into firmware, by file name."""

    owner: uuid.UUID
    timestamp: EfiTime
    files: dict[str, bytes]


def build_enrolment(
    keyset: KeySet,
    timestamp: EfiTime,
    *,
    dbx_hashes: Sequence[bytes] = (),
) -> Enrolment:
    """``PK/KEK/db(.esl|.auth|.cer)`` (+ ``dbx`` when hashes are given) from a key set.

    PK.auth is signed by PK, KEK.auth by PK, db.auth and dbx.auth by KEK. Opening the
    PK and KEK private keys is why this runs where those offline keys are.
    """
    certs = {v: keyset.certificate(role) for v, role in ROLES.items()}
    owner = owner_guid(certs["PK"])
    pk_signer = keyset.signer(ROLES["PK"], scheme=_SCHEME)
    kek_signer = keyset.signer(ROLES["KEK"], scheme=_SCHEME)
    data = {v: encode_signature_lists([certificate_list(owner, c)]) for v, c in certs.items()}
    if dbx_hashes:
        data["dbx"] = encode_signature_lists([SignatureList.sha256(owner, dbx_hashes)])
    signing = {"PK": (pk_signer, certs["PK"]), "KEK": (pk_signer, certs["PK"])}
    files: dict[str, bytes] = {}
    for variable, payload in data.items():
        signer, cert = signing.get(variable, (kek_signer, certs["KEK"]))
        files[f"{variable}.esl"] = payload
        files[f"{variable}.auth"] = sign_update(
            variable, payload, signer, cert, timestamp
        ).to_bytes()
        if variable in certs:
            files[f"{variable}.cer"] = certificate_der(certs[variable])
    return Enrolment(owner, timestamp, files)


def write_enrolment(
    keyset: KeySet,
    folder: str | os.PathLike[str],
    timestamp: EfiTime,
    *,
    dbx_hashes: Sequence[bytes] = (),
) -> Enrolment:
    """:func:`build_enrolment` and write its files into ``folder`` (public data, 0644)."""
    from bastion.io.files import atomic_write

    enrolment = build_enrolment(keyset, timestamp, dbx_hashes=dbx_hashes)
    target = Path(folder)
    for name, content in sorted(enrolment.files.items()):
        atomic_write(target / name, content, 0o644)
    return enrolment
