"""The product key set: every key a bastion product needs, made in one go, loaded by role.

``create_keyset(folder, product=...)`` makes (defaults in :data:`ROLES`):

============== ============ ========= ==================================================
role           algorithm    lives     used for
============== ============ ========= ==================================================
platform-root  Ed25519      offline   its SHA-256 SPKI hash is fused into devices; signs
                                      the boot key's and other stage keys' envelopes
boot           Ed25519      build     signs boot-chain stages
image          Ed25519      build     signs root filesystem images (verity root hashes)
update (x2)    Ed25519      build     sign update metadata (two keys: thresholds)
module         RSA-3072     build     kernel module signatures (+ X.509 certificate)
verity         RSA-3072     build     PKCS#7 over the dm-verity root hash (+ X.509)
fleet-root-ca  ECDSA P-256  offline   root of the fleet PKI (self-signed, pathlen 1)
fleet-ca       ECDSA P-256  server    issues device and server certificates (pathlen 0)
secureboot-pk  RSA-2048     offline   UEFI PK: signs PK and KEK updates (+ X.509)
secureboot-kek RSA-2048     offline   UEFI KEK: signs db and dbx updates (+ X.509)
secureboot-db  RSA-2048     build     UEFI db: signs boot artefacts (+ X.509)
pcr            RSA-2048     build     the UKI's signed PCR 11 policy (.pcrsig)
============== ============ ========= ==================================================

While the platform root key is still on this machine, ``create_keyset`` also signs
with it everything later builds need from it, so that no build or device command ever
needs an offline key (ADR 0015): ``profile-delegation.json``, which delegates signing
device security profiles to the boot key (``device create``).

Layout: ``<name>.key.pem`` (PKCS#8, mode 0600, optionally passphrase-encrypted),
``<name>.pub.pem``, ``<name>.crt.pem`` (+ ``.crt.der`` for the kernel's tools) where a
certificate exists, and ``keys.json`` listing each key's role, algorithm, key id,
files, location and keep-offline flag. :class:`KeySet` loads the manifest, checks
every public key against its recorded key id, and hands out Signers, public keys,
certificates and CAs by role; private keys are read only when a Signer is opened.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.errors import (
    ConfigError,
    ConflictError,
    FormatError,
    NotFoundError,
    VerificationError,
)
from bastion.formats import strict_json
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import BOOT_STATEMENT_MAX_SIZE, CERT_MAX_SIZE, JSON_MAX_SIZE
from bastion.trust import delegation, pki
from bastion.trust.keys import (
    KeyAlgorithm,
    KeyUri,
    PassphraseCallback,
    generate_private_key,
    load_public_key_file,
    open_signer,
    private_key_to_pem,
    public_key_to_pem,
)
from bastion.trust.signer import (
    PrivateKey,
    PublicKey,
    SignatureScheme,
    Signer,
    SoftwareSigner,
    Verifier,
    key_id,
)

MANIFEST = "keys.json"
#: statements the platform root key signs at ``keys init`` (name -> file)
STATEMENTS = {
    "profile-delegation": "profile-delegation.json",
}
FORMAT = "bastion-keyset"
VERSION = 1


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """What ``keys init`` makes for one role."""

    role: str
    algorithm: KeyAlgorithm
    location: str  # offline | build | server
    purpose: str
    count: int = 1
    certificate: str | None = None  # root-ca | intermediate-ca | code-signing

    @property
    def offline(self) -> bool:
        """Keep this key off every networked machine."""
        return self.location == "offline"


ROLES: tuple[RoleSpec, ...] = (
    RoleSpec(
        "platform-root",
        KeyAlgorithm.ED25519,
        "offline",
        "root of the device trust chain; its SHA-256 SPKI hash is fused into devices",
    ),
    RoleSpec("boot", KeyAlgorithm.ED25519, "build", "signs boot-chain stages"),
    RoleSpec("image", KeyAlgorithm.ED25519, "build", "signs root filesystem images"),
    RoleSpec("update", KeyAlgorithm.ED25519, "build", "signs update metadata", count=2),
    RoleSpec(
        "module", KeyAlgorithm.RSA_3072, "build", "signs kernel modules", certificate="code-signing"
    ),
    RoleSpec(
        "verity",
        KeyAlgorithm.RSA_3072,
        "build",
        "PKCS#7 signature over dm-verity root hashes",
        certificate="code-signing",
    ),
    RoleSpec(
        "fleet-root-ca",
        KeyAlgorithm.ECDSA_P256,
        "offline",
        "root of the fleet PKI; signs the fleet CA",
        certificate="root-ca",
    ),
    RoleSpec(
        "fleet-ca",
        KeyAlgorithm.ECDSA_P256,
        "server",
        "issues device and server certificates, signs CRLs",
        certificate="intermediate-ca",
    ),
    # UEFI Secure Boot (trust/secureboot.py, docs/secureboot.md): RSA-2048 as firmware expects
    RoleSpec(
        "secureboot-pk",
        KeyAlgorithm.RSA_2048,
        "offline",
        "UEFI Platform Key: signs PK and KEK updates only",
        certificate="secureboot",
    ),
    RoleSpec(
        "secureboot-kek",
        KeyAlgorithm.RSA_2048,
        "offline",
        "UEFI Key Exchange Key: signs db and dbx updates only",
        certificate="secureboot",
    ),
    RoleSpec(
        "secureboot-db",
        KeyAlgorithm.RSA_2048,
        "build",
        "UEFI db: the online key that signs boot artefacts (UKI, boot loader)",
        certificate="secureboot",
    ),
    # the UKI's .pcrpkey/.pcrsig (trust/pcr11.py): systemd verifies RSA in the TPM
    RoleSpec(
        "pcr",
        KeyAlgorithm.RSA_2048,
        "build",
        "signs each UKI's PCR 11 policy (.pcrsig); the data volume's TPM token trusts it",
    ),
)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One key of the set, as recorded in ``keys.json``."""

    role: str
    name: str
    algorithm: str
    key_id: str
    private_key: str
    public_key: str
    certificate: str | None
    offline: bool
    location: str
    encrypted: bool
    purpose: str

    def to_json(self) -> dict[str, object]:
        """The manifest entry."""
        return {
            "role": self.role,
            "name": self.name,
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "private_key": self.private_key,
            "public_key": self.public_key,
            "certificate": self.certificate,
            "offline": self.offline,
            "location": self.location,
            "encrypted": self.encrypted,
            "purpose": self.purpose,
        }


def _code_signing_cert(
    key: PrivateKey, common_name: str, product: str, now: dt.datetime
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, product),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=20 * 365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def create_keyset(
    folder: str | os.PathLike[str],
    *,
    product: str = "bastion",
    passphrase: bytes | None = None,
    now: dt.datetime | None = None,
    rsa_algorithm: KeyAlgorithm | None = None,
) -> KeySet:
    """Make every key of :data:`ROLES` in ``folder`` (which must be absent or empty).

    ``rsa_algorithm`` overrides RSA-3072 (tests use RSA-2048 for speed).
    """
    if not 1 <= len(product) <= 40 or not product.isprintable():
        raise ConfigError(f"product name {product!r}: expected 1-40 printable characters")
    target = Path(folder)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConflictError(
            f"key set folder {str(target)!r} exists and is not empty: refusing to overwrite"
        )
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    t = now or dt.datetime.now(dt.UTC)
    entries: list[KeyEntry] = []
    made: dict[str, PrivateKey] = {}
    root_ca: pki.CertificateAuthority | None = None
    for spec in ROLES:
        for index in range(spec.count):
            name = spec.role if spec.count == 1 else f"{spec.role}-{index + 1}"
            algorithm = spec.algorithm
            if (
                rsa_algorithm is not None
                and algorithm.value.startswith("rsa")
                and spec.certificate != "secureboot"
            ):
                algorithm = rsa_algorithm
            key = generate_private_key(algorithm)
            made[name] = key
            public = key.public_key()
            atomic_write(target / f"{name}.key.pem", private_key_to_pem(key, passphrase), 0o600)
            atomic_write(target / f"{name}.pub.pem", public_key_to_pem(public), 0o644)
            cert_file: str | None = None
            cert: x509.Certificate | None = None
            if spec.certificate == "code-signing":
                cert = _code_signing_cert(key, f"{product} {spec.role} signing key", product, t)
            elif spec.certificate == "root-ca":
                cert = pki.create_root_ca(
                    SoftwareSigner(key), f"{product} fleet root CA", organization=product, now=t
                )
                root_ca = pki.CertificateAuthority(SoftwareSigner(key), cert)
            elif spec.certificate == "intermediate-ca":
                if root_ca is None:
                    raise ConflictError("fleet-root-ca must be made before fleet-ca")
                cert = pki.create_intermediate_ca(
                    root_ca, public, f"{product} fleet CA", organization=product, now=t
                )
            elif spec.certificate == "secureboot":
                from bastion.trust.secureboot import VARIABLE_OF_ROLE, create_certificate

                cert = create_certificate(
                    SoftwareSigner(key), VARIABLE_OF_ROLE[spec.role], product, now=t
                )
            if cert is not None:
                cert_file = f"{name}.crt.pem"
                atomic_write(target / cert_file, cert.public_bytes(serialization.Encoding.PEM))
                atomic_write(
                    target / f"{name}.crt.der", cert.public_bytes(serialization.Encoding.DER)
                )
            entries.append(
                KeyEntry(
                    role=spec.role,
                    name=name,
                    algorithm=algorithm.value,
                    key_id=key_id(public),
                    private_key=f"{name}.key.pem",
                    public_key=f"{name}.pub.pem",
                    certificate=cert_file,
                    offline=spec.offline,
                    location=spec.location,
                    encrypted=passphrase is not None,
                    purpose=spec.purpose,
                )
            )
    for name, data in offline_statements(made["platform-root"], made["boot"]).items():
        atomic_write(target / STATEMENTS[name], data, 0o644)
    keyset = KeySet(target, product, tuple(entries), statements=dict(STATEMENTS))
    atomic_write(target / MANIFEST, keyset.manifest_bytes(), 0o644)
    return keyset


def offline_statements(platform_root: PrivateKey, boot: PrivateKey) -> dict[str, bytes]:
    """What the platform root signs once so builds never need it (see :data:`STATEMENTS`)."""
    root = SoftwareSigner(platform_root)
    return {
        "profile-delegation": delegation.sign_delegation(
            root, delegation.ROLE_PROFILE, boot.public_key()
        ),
    }


class KeySet:
    """A loaded key set: Signers, public keys, certificates and CAs by role."""

    def __init__(
        self,
        folder: Path,
        product: str,
        entries: tuple[KeyEntry, ...],
        passphrase: PassphraseCallback | None = None,
        *,
        statements: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.product = product
        self.entries = entries
        self.statements = statements or {}
        self._passphrase = passphrase

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], passphrase: PassphraseCallback | None = None
    ) -> KeySet:
        """Read ``keys.json`` and check every public key file against its key id."""
        target = Path(folder)
        data = read_bounded(target / MANIFEST, JSON_MAX_SIZE, "key set manifest")
        try:
            doc = strict_json.loads_object(data, what=f"{target / MANIFEST}")
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise FormatError(
                    f"{target / MANIFEST}: format {doc.get('format')!r} v{doc.get('version')}, "
                    f"expected {FORMAT!r} v{VERSION}"
                )
            entries = tuple(
                KeyEntry(
                    role=str(e["role"]),
                    name=str(e["name"]),
                    algorithm=str(e["algorithm"]),
                    key_id=str(e["key_id"]),
                    private_key=_plain_name(e["private_key"]),
                    public_key=_plain_name(e["public_key"]),
                    certificate=_plain_name(e["certificate"]) if e.get("certificate") else None,
                    offline=bool(e["offline"]),
                    location=str(e["location"]),
                    encrypted=bool(e.get("encrypted", False)),
                    purpose=str(e.get("purpose", "")),
                )
                for e in doc["keys"]
            )
            product = str(doc["product"])
            statements = {
                str(k): _plain_name(v) for k, v in dict(doc.get("statements", {})).items()
            }
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"{target / MANIFEST} is malformed: {exc}") from exc
        keyset = cls(target, product, entries, passphrase, statements=statements)
        for entry in entries:
            actual = key_id(keyset.public_key(entry.role, _index(keyset, entry)))
            if actual != entry.key_id:
                raise VerificationError(
                    f"key set {entry.name}: public key id {actual[:16]}... differs from the "
                    f"manifest's {entry.key_id[:16]}..."
                )
        return keyset

    def manifest_bytes(self) -> bytes:
        """The ``keys.json`` document."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "product": self.product,
            "platform_root_hash": self.platform_root_hash().hex(),
            "keys": [e.to_json() for e in self.entries],
        }
        if self.statements:
            doc["statements"] = self.statements
        return (json.dumps(doc, indent=2) + "\n").encode()

    # --- lookups -------------------------------------------------------------------------
    def entries_for(self, role: str) -> list[KeyEntry]:
        """Every key of ``role`` (in order)."""
        found = [e for e in self.entries if e.role == role]
        if not found:
            roles = sorted({e.role for e in self.entries})
            raise NotFoundError(f"key set has no {role!r} key: roles are {roles}")
        return found

    def entry(self, role: str, index: int = 0) -> KeyEntry:
        """The ``index``-th key of ``role``."""
        found = self.entries_for(role)
        if not 0 <= index < len(found):
            raise NotFoundError(f"key set has {len(found)} {role!r} key(s), asked for #{index}")
        return found[index]

    def key_uri(self, role: str, index: int = 0) -> KeyUri:
        """The ``file:`` URI of the private key."""
        return KeyUri("file", str(self.folder / self.entry(role, index).private_key))

    def signer(self, role: str, index: int = 0, scheme: SignatureScheme | None = None) -> Signer:
        """Open the private key of ``role`` as a Signer (checked against ``keys.json``)."""
        entry = self.entry(role, index)
        signer = open_signer(self.key_uri(role, index), passphrase=self._passphrase, scheme=scheme)
        if signer.key_id != entry.key_id:
            raise VerificationError(
                f"key set {entry.name}: private key id {signer.key_id[:16]}... differs from "
                f"the manifest's {entry.key_id[:16]}..."
            )
        return signer

    def signers(self, role: str) -> list[Signer]:
        """Signers for every key of ``role``."""
        return [self.signer(role, i) for i in range(len(self.entries_for(role)))]

    def public_key(self, role: str, index: int = 0) -> PublicKey:
        """The public key of ``role``."""
        return load_public_key_file(self.folder / self.entry(role, index).public_key)

    def verifier(self, role: str, index: int = 0) -> Verifier:
        """A Verifier (default scheme) for ``role``."""
        return Verifier.of(self.public_key(role, index))

    def verifiers(self, role: str) -> list[Verifier]:
        """Verifiers for every key of ``role``."""
        return [self.verifier(role, i) for i in range(len(self.entries_for(role)))]

    def certificate(self, role: str, index: int = 0) -> x509.Certificate:
        """The X.509 certificate of ``role`` (module, verity, fleet-root-ca, fleet-ca)."""
        entry = self.entry(role, index)
        if entry.certificate is None:
            raise NotFoundError(f"key set {entry.name} has no certificate")
        path = self.folder / entry.certificate
        return pki.load_certificates(read_bounded(path, CERT_MAX_SIZE, "certificate"))[0]

    def certificate_authority(self, role: str = "fleet-ca") -> pki.CertificateAuthority:
        """``role``'s key and certificate as a CA (fleet-root-ca or fleet-ca)."""
        return pki.CertificateAuthority(self.signer(role), self.certificate(role))

    def platform_root_hash(self) -> bytes:
        """SHA-256 of the platform root key's DER SubjectPublicKeyInfo (the fused value)."""
        spki = self.public_key("platform-root").public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).digest()

    def statement(self, name: str) -> bytes | None:
        """A statement the platform root signed at ``keys init`` (None in older key sets)."""
        file = self.statements.get(name)
        if file is None:
            return None
        return read_bounded(
            self.folder / file, BOOT_STATEMENT_MAX_SIZE, f"key set statement {name!r}"
        )

    def offline_files(self) -> list[str]:
        """Private key files that must leave this machine for offline storage."""
        return [e.private_key for e in self.entries if e.offline]


def _plain_name(value: object) -> str:
    name = str(value)
    if not name or "/" in name or name in (".", ".."):
        raise FormatError(f"key set manifest names file {name!r}: expected a plain file name")
    return name


def _index(keyset: KeySet, entry: KeyEntry) -> int:
    return keyset.entries_for(entry.role).index(entry)
