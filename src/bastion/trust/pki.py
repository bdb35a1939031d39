"""The fleet PKI: root and fleet CAs, device and server certificates, CRLs, validation.

Hierarchy: an offline **root CA** (pathlen 1) signs the online **fleet CA**
(pathlen 0), which issues **device certificates** from CSRs (subject CN = device id,
SAN URI ``urn:bastion:device:<id>`` and optionally DNS ``<id>.<domain>``, EKU
clientAuth, keyUsage digitalSignature, SKI/AKI) and **server TLS certificates** (EKU
serverAuth, SAN DNS/IP), and signs **CRLs** (CRL number, nextUpdate, AKI).

A CA is a :class:`CertificateAuthority` = a :class:`~bastion.trust.signer.Signer` plus
its certificate. With a software key, cryptography's builders sign directly; with any
other signer (TPM, HSM) the certificate or CRL is built, its TBS bytes are signed by
the Signer and the signature is spliced into the DER (:func:`_resign`).

:func:`verify_chain` builds and checks the path with
``cryptography.x509.verification`` (client or server usage), after a validity check
of its own so that an expired or not-yet-valid certificate raises
:class:`~bastion.errors.ExpiredError` naming it, then checks revocation against CRLs
whose signature verifies with the issuing CA key. Wrong usage, broken chains and bad
signatures raise :class:`~bastion.errors.VerificationError` /
:class:`~bastion.errors.SignatureError` with the subject named.

Pure: objects and bytes in, objects out; time is a parameter.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.errors import (
    ConfigError,
    ExpiredError,
    FormatError,
    LimitError,
    RevokedError,
    SignatureError,
    VerificationError,
)
from bastion.formats import strict_json
from bastion.formats.modsig import der_read, der_tlv
from bastion.limits import CERT_CHAIN_MAX_DEPTH, CERT_MAX_SIZE, JSON_MAX_SIZE
from bastion.trust.signer import (
    PublicKey,
    SignatureScheme,
    Signer,
    SoftwareSigner,
    describe_key,
)

DEVICE_URN_PREFIX = "urn:bastion:device:"
# 64 = ub-common-name (RFC 5280): the id is the subject CN
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_BACKDATE = dt.timedelta(minutes=5)


def _now(now: dt.datetime | None) -> dt.datetime:
    value = now or dt.datetime.now(dt.UTC)
    if value.tzinfo is None:
        raise ConfigError("time must be timezone-aware (UTC)")
    return value.astimezone(dt.UTC)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    for label, value in (("common name", common_name), ("organization", organization)):
        if value is not None and not 1 <= len(value) <= 64:
            raise ConfigError(f"{label} {value!r}: expected 1-64 characters (RFC 5280 bound)")
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def subject_text(cert: x509.Certificate) -> str:
    """The subject as an RFC 4514 string, for messages."""
    return cert.subject.rfc4514_string()


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is 1..64 of ``[A-Za-z0-9._-]`` starting alphanumeric."""
    if not _DEVICE_ID_RE.match(device_id):
        raise ConfigError(
            f"device id {device_id!r}: expected 1-64 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return device_id


def check_issuable(key: object, what: str = "subject") -> PublicKey:
    """``key`` if bastion issues certificates for its type, else FormatError."""
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise FormatError(f"{what} key {type(key).__name__}: expected ECDSA P-256/P-384 or RSA")
    _check_issuable_key(key, what)
    return key


def _check_issuable_key(key: PublicKey, what: str) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1"):
        return
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return
    raise FormatError(
        f"{what} key is {describe_key(key)}: expected ECDSA P-256/P-384 or RSA >= 2048 "
        "(what TLS stacks and the path validator accept)"
    )


# --- signing with a Signer -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA: the signer holding its key and its certificate."""

    signer: Signer
    certificate: x509.Certificate

    def __post_init__(self) -> None:
        pub = self.certificate.public_key()
        if pub != self.signer.public_key():
            raise ConfigError(
                f"CA key {self.signer.key_id[:16]}... does not match the certificate "
                f"{subject_text(self.certificate)}"
            )
        bc = _ext(self.certificate, x509.BasicConstraints)
        if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
            raise ConfigError(f"{subject_text(self.certificate)} is not a CA certificate")


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _hash_for(signer: Signer) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    if signer.scheme is SignatureScheme.ED25519:
        return None
    if signer.scheme.key_type == "rsa":
        return hashes.SHA256()
    name = signer.scheme.hash_name
    return (
        hashes.SHA384()
        if name == "sha384"
        else hashes.SHA512()
        if name == "sha512"
        else hashes.SHA256()
    )


def _throwaway(
    signer: Signer,
) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    pub = signer.public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return ed25519.Ed25519PrivateKey.generate()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return ec.generate_private_key(pub.curve)
    if signer.scheme is not SignatureScheme.RSA_PKCS1V15_SHA256:
        raise ConfigError(
            f"an RSA CA key held outside software must sign with rsa-pkcs1v15-sha256, "
            f"not {signer.scheme}"
        )
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _resign(der: bytes, signer: Signer) -> bytes:
    """Replace the signature of a DER Certificate/CertificateList by ``signer``'s over its TBS."""
    _, start, _ = der_read(der, 0)
    _, _, tbs_end = der_read(der, start)
    tbs = der[start:tbs_end]
    _, _, alg_end = der_read(der, tbs_end)
    alg = der[tbs_end:alg_end]
    signature = signer.sign(tbs)
    return der_tlv(0x30, tbs + alg + der_tlv(0x03, b"\x00" + signature))


def _sign_cert(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    if isinstance(signer, SoftwareSigner):
        return builder.sign(signer._private_key(), _hash_for(signer))
    draft = builder.sign(_throwaway(signer), _hash_for(signer))
    return x509.load_der_x509_certificate(
        _resign(draft.public_bytes(serialization.Encoding.DER), signer)
    )


def _sign_crl(
    builder: x509.CertificateRevocationListBuilder, signer: Signer
) -> x509.CertificateRevocationList:
    if isinstance(signer, SoftwareSigner):
        return builder.sign(signer._private_key(), _hash_for(signer))
    draft = builder.sign(_throwaway(signer), _hash_for(signer))
    return x509.load_der_x509_crl(_resign(draft.public_bytes(serialization.Encoding.DER), signer))


# --- issuing -----------------------------------------------------------------------------


def _base(  # noqa: PLR0917
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    now: dt.datetime,
    validity: dt.timedelta,
    serial: int | None,
) -> x509.CertificateBuilder:
    if validity <= dt.timedelta(0):
        raise ConfigError(f"validity must be positive, got {validity}")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _aki(ca: CertificateAuthority) -> x509.AuthorityKeyIdentifier:
    ski = _ext(ca.certificate, x509.SubjectKeyIdentifier)
    if isinstance(ski, x509.SubjectKeyIdentifier):
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.signer.public_key())


def create_root_ca(
    signer: Signer,
    common_name: str,
    *,
    organization: str | None = None,
    validity: dt.timedelta = dt.timedelta(days=20 * 365),
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A self-signed root CA certificate (pathlen 1) for ``signer``'s key."""
    name = _name(common_name, organization)
    builder = (
        _base(name, name, signer.public_key(), _now(now), validity, None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
    )
    return _sign_cert(builder, signer)


def create_intermediate_ca(
    parent: CertificateAuthority,
    public_key: PublicKey,
    common_name: str,
    *,
    organization: str | None = None,
    validity: dt.timedelta = dt.timedelta(days=5 * 365),
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A CA certificate with pathlen 0 (issues only end-entity certificates)."""
    _check_issuable_key(public_key, "intermediate CA")
    builder = (
        _base(
            _name(common_name, organization),
            parent.certificate.subject,
            public_key,
            _now(now),
            validity,
            None,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(_aki(parent), critical=False)
    )
    return _sign_cert(builder, parent.signer)


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR and check its self-signature (proof of possession)."""
    if len(data) > CERT_MAX_SIZE:
        raise LimitError(f"CSR is {len(data)} bytes, limit is {CERT_MAX_SIZE}")
    try:
        csr = (
            x509.load_pem_x509_csr(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_csr(data)
        )
        valid = csr.is_signature_valid
    except Exception as exc:
        raise FormatError(f"CSR is not a PEM/DER certificate request: {exc}") from exc
    if not valid:
        raise SignatureError(f"CSR for {csr.subject.rfc4514_string()!r}: self-signature is invalid")
    return csr


def issue_device_certificate(
    ca: CertificateAuthority,
    csr_pem: bytes,
    device_id: str,
    validity: dt.timedelta = dt.timedelta(days=365),
    *,
    now: dt.datetime | None = None,
    dns_domain: str | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    """A client-auth certificate for the CSR's key, naming ``device_id``.

    The CA decides the names: subject CN = device id, SAN URI
    ``urn:bastion:device:<id>`` (+ DNS ``<id>.<dns_domain>`` when given); the CSR's own
    subject and extensions are ignored, its key must be ECDSA P-256/P-384 or RSA.
    """
    check_device_id(device_id)
    csr = load_csr(csr_pem)
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise FormatError(f"CSR key {type(public_key).__name__}: expected ECDSA or RSA")
    _check_issuable_key(public_key, "device")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(DEVICE_URN_PREFIX + device_id)]
    if dns_domain:
        label = device_id.lower()
        if not _DNS_LABEL_RE.match(label):
            raise ConfigError(
                f"device id {device_id!r} is not a DNS label (a-z 0-9 -), so it cannot be "
                f"named under {dns_domain!r}; issue without a DNS domain"
            )
        names.append(x509.DNSName(f"{label}.{dns_domain.lower()}"))
    builder = (
        _base(_name(device_id), ca.certificate.subject, public_key, _now(now), validity, serial)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(_aki(ca), critical=False)
    )
    return _sign_cert(builder, ca.signer)


def issue_server_certificate(
    ca: CertificateAuthority,
    public_key: PublicKey,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    validity: dt.timedelta = dt.timedelta(days=90),
    *,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A TLS server certificate (serverAuth) for ``dns_names`` / ``ip_addresses``."""
    if not dns_names and not ip_addresses:
        raise ConfigError("a server certificate needs at least one DNS name or IP address")
    _check_issuable_key(public_key, "server")
    names: list[x509.GeneralName] = [x509.DNSName(n.lower()) for n in dns_names]
    try:
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    except ValueError as exc:
        raise ConfigError(f"bad IP address: {exc}") from exc
    common = dns_names[0] if dns_names else ip_addresses[0]
    # the CN is informational (clients match the SAN); a name too long for it is left out,
    # and then the SAN must be critical (RFC 5280 4.2.1.6)
    subject = _name(common) if len(common) <= 64 else x509.Name([])
    builder = (
        _base(subject, ca.certificate.subject, public_key, _now(now), validity, None)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=len(common) > 64)
        .add_extension(_aki(ca), critical=False)
    )
    return _sign_cert(builder, ca.signer)


def device_id_of(cert: x509.Certificate) -> str:
    """The device id in the certificate's ``urn:bastion:device:`` SAN URI."""
    san = _ext(cert, x509.SubjectAlternativeName)
    if isinstance(san, x509.SubjectAlternativeName):
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(DEVICE_URN_PREFIX):
                return check_device_id(uri[len(DEVICE_URN_PREFIX) :])
    raise VerificationError(f"{subject_text(cert)} names no bastion device (SAN URI)")


# --- revocation --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One revoked serial number."""

    serial: int
    revoked_at: dt.datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RevocationState:
    """What a CA has revoked and the last CRL number it used (the CLI's state file)."""

    crl_number: int = 0
    revoked: tuple[RevokedEntry, ...] = field(default=())

    def revoke(self, serial: int, when: dt.datetime, reason: str | None = None) -> RevocationState:
        """A copy with ``serial`` revoked (idempotent: the first revocation wins)."""
        reasons = sorted(x509.ReasonFlags.__members__)
        if reason is not None and reason not in reasons:
            raise ConfigError(f"revocation reason {reason!r}: expected one of {reasons}")
        if any(e.serial == serial for e in self.revoked):
            return self
        return RevocationState(self.crl_number, (*self.revoked, RevokedEntry(serial, when, reason)))

    def to_bytes(self) -> bytes:
        """JSON."""
        doc = {
            "crl_number": self.crl_number,
            "revoked": [
                {
                    "serial": f"{e.serial:x}",
                    "revoked_at": e.revoked_at.isoformat(),
                    "reason": e.reason,
                }
                for e in self.revoked
            ],
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> RevocationState:
        """Parse the JSON state; FormatError if malformed."""
        if len(data) > JSON_MAX_SIZE:
            raise LimitError(f"revocation state is {len(data)} bytes, limit {JSON_MAX_SIZE}")
        try:
            doc = strict_json.loads_object(data, what="revocation state")
            entries = tuple(
                RevokedEntry(
                    int(e["serial"], 16),
                    dt.datetime.fromisoformat(e["revoked_at"]),
                    e.get("reason"),
                )
                for e in doc["revoked"]
            )
            return cls(int(doc["crl_number"]), entries)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"revocation state is malformed: {exc}") from exc


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[RevokedEntry],
    *,
    crl_number: int,
    next_update: dt.timedelta = dt.timedelta(days=7),
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` with a CRL number, AKI and nextUpdate = now + ``next_update``."""
    t = _now(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(t - _BACKDATE)
        .next_update(t + next_update)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(_aki(ca), critical=False)
    )
    for entry in revoked:
        rc = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason:
            rc = rc.add_extension(x509.CRLReason(x509.ReasonFlags[entry.reason]), critical=False)
        builder = builder.add_revoked_certificate(rc.build())
    return _sign_crl(builder, ca.signer)


# --- validation --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    """A validated path, leaf first, root last."""

    chain: tuple[x509.Certificate, ...]
    usage: str

    @property
    def leaf(self) -> x509.Certificate:
        """The end-entity certificate."""
        return self.chain[0]


def _validity(cert: x509.Certificate, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise ExpiredError(
            f"certificate {subject_text(cert)} is not valid before "
            f"{cert.not_valid_before_utc.isoformat()} (now {now.isoformat()})"
        )
    if now > cert.not_valid_after_utc:
        raise ExpiredError(
            f"certificate {subject_text(cert)} expired at "
            f"{cert.not_valid_after_utc.isoformat()} (now {now.isoformat()})"
        )


def _likely_path(
    leaf: x509.Certificate, pool: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """Follow issuer names through ``pool`` (for diagnostics only)."""
    path = [leaf]
    current = leaf
    for _ in range(CERT_CHAIN_MAX_DEPTH):
        if current.issuer == current.subject:
            break
        nxt = next((c for c in pool if c.subject == current.issuer and c not in path), None)
        if nxt is None:
            break
        path.append(nxt)
        current = nxt
    return path


def _diagnose(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    usage: str,
    now: dt.datetime,
    reason: str,
) -> VerificationError:
    path = _likely_path(leaf, pool)
    for cert in path:
        try:
            _validity(cert, now)
        except ExpiredError as exc:
            return exc
    eku = _ext(leaf, x509.ExtendedKeyUsage)
    wanted = (
        ExtendedKeyUsageOID.CLIENT_AUTH if usage == "client" else ExtendedKeyUsageOID.SERVER_AUTH
    )
    if isinstance(eku, x509.ExtendedKeyUsage) and wanted not in eku:
        have = ", ".join(getattr(o, "_name", o.dotted_string) for o in eku)
        return VerificationError(
            f"certificate {subject_text(leaf)} may not be used for {usage} authentication "
            f"(extended key usage: {have})"
        )
    for child, parent in itertools.pairwise(path):
        try:
            child.verify_directly_issued_by(parent)
        except Exception:
            return SignatureError(
                f"certificate {subject_text(child)} is not signed by {subject_text(parent)}"
            )
    if path[-1].issuer != path[-1].subject or path[-1] not in pool:
        return VerificationError(
            f"no path from {subject_text(leaf)} to a trusted root "
            f"(stuck at issuer {path[-1].issuer.rfc4514_string()}): {reason}"
        )
    return VerificationError(f"certificate {subject_text(leaf)} does not verify: {reason}")


def _check_crls(
    chain: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    now: dt.datetime,
) -> None:
    for index, (cert, issuer) in enumerate(itertools.pairwise(chain)):
        matching = [c for c in crls if c.issuer == issuer.subject]
        valid = []
        for crl in matching:
            key = issuer.public_key()
            if isinstance(
                key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
            ) and crl.is_signature_valid(key):
                valid.append(crl)
        if matching and not valid:
            raise SignatureError(f"CRL from {subject_text(issuer)} has an invalid signature")
        if not valid:
            if index == 0:
                raise VerificationError(
                    f"no CRL from {subject_text(issuer)} to check {subject_text(cert)} against"
                )
            continue
        for crl in valid:
            if crl.next_update_utc is None or now > crl.next_update_utc:
                raise ExpiredError(
                    f"CRL from {subject_text(issuer)} is stale: next update was "
                    f"{crl.next_update_utc} (now {now.isoformat()})"
                )
            if now < crl.last_update_utc:
                raise ExpiredError(f"CRL from {subject_text(issuer)} is not valid yet")
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                raise RevokedError(
                    f"certificate {subject_text(cert)} (serial {cert.serial_number:x}) was revoked "
                    f"at {entry.revocation_date_utc.isoformat()} by {subject_text(issuer)}"
                )


def verify_chain(
    leaf: x509.Certificate,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    usage: str = "client",
    server_name: str | None = None,
    crls: Sequence[x509.CertificateRevocationList] | None = None,
    now: dt.datetime | None = None,
) -> VerifiedChain:
    """Validate ``leaf`` up to one of ``roots`` for ``usage`` ("client" or "server").

    With ``crls`` (even empty), the leaf must be covered by a valid, current CRL from
    its issuer; intermediates are checked against any CRL given for their issuer.
    Raises ExpiredError, RevokedError, SignatureError or VerificationError.
    """
    t = _now(now)
    if usage not in ("client", "server"):
        raise ConfigError(f"usage {usage!r}: expected client or server")
    if not roots:
        raise ConfigError("verify_chain needs at least one trusted root")
    if len(intermediates) > CERT_CHAIN_MAX_DEPTH:
        raise LimitError(f"{len(intermediates)} intermediates, limit {CERT_CHAIN_MAX_DEPTH}")
    _validity(leaf, t)
    builder = (
        xv.PolicyBuilder()
        .store(xv.Store(list(roots)))
        .time(t)
        .max_chain_depth(CERT_CHAIN_MAX_DEPTH)
    )
    try:
        if usage == "client":
            chain = builder.build_client_verifier().verify(leaf, list(intermediates)).chain
        else:
            if not server_name:
                raise ConfigError("server usage needs server_name (DNS name or IP)")
            try:
                subject: xv.Subject = x509.IPAddress(ipaddress.ip_address(server_name))
            except ValueError:
                subject = x509.DNSName(server_name)
            chain = builder.build_server_verifier(subject).verify(leaf, list(intermediates))
    except xv.VerificationError as exc:
        raise _diagnose(leaf, [*intermediates, *roots], usage, t, str(exc)) from exc
    if crls is not None:
        _check_crls(chain, crls, t)
    return VerifiedChain(tuple(chain), usage)


def load_certificates(data: bytes, what: str = "certificate") -> list[x509.Certificate]:
    """All certificates in a PEM bundle, or one DER certificate."""
    if len(data) > CERT_MAX_SIZE * CERT_CHAIN_MAX_DEPTH:
        raise LimitError(f"{what} file is {len(data)} bytes")
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except Exception as exc:
        raise FormatError(f"{what} is not a PEM/DER certificate: {exc}") from exc
    return certs


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A PEM or DER CRL."""
    if len(data) > JSON_MAX_SIZE:
        raise LimitError(f"CRL is {len(data)} bytes, limit {JSON_MAX_SIZE}")
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except Exception as exc:
        raise FormatError(f"CRL is not PEM/DER: {exc}") from exc
