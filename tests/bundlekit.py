"""Helpers for bundle tests: a release CA, a signing certificate, synthetic bundles."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from bastion.formats import verity
from bastion.formats.bundle import trailer_bytes
from bastion.formats.raucm import FORMAT_VERITY, GOLDEN_FILE, GoldenRef, Manifest, ManifestImage
from bastion.trust.bundle import sign_manifest
from bastion.trust.signer import SignatureScheme, SoftwareSigner

NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class ReleaseKeys:
    """A CA (the keyring) and a leaf signing certificate it issued."""

    ca: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    def signer(self) -> SoftwareSigner:
        scheme = (
            SignatureScheme.RSA_PKCS1V15_SHA256 if isinstance(self.key, rsa.RSAPrivateKey) else None
        )
        return SoftwareSigner(self.key, scheme)

    def write(self, folder: Path) -> tuple[Path, Path, Path]:
        """ca.pem, cert.pem, key.pem in ``folder``."""
        ca = folder / "ca.pem"
        cert = folder / "cert.pem"
        key = folder / "key.pem"
        ca.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))
        cert.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return ca, cert, key


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] | None,
    *,
    ca: bool,
    not_after: dt.datetime,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (subject, key) if issuer is None else issuer
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def release_keys(name: str = "release", *, rsa_key: bool = False, days: int = 30) -> ReleaseKeys:
    """A fresh CA and leaf (ECDSA P-256, or RSA-2048 with ``rsa_key``)."""

    def new() -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
        if rsa_key:
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())

    ca_key, key = new(), new()
    until = NOW + dt.timedelta(days=days)
    ca = _cert(f"bastion {name} CA", ca_key, None, ca=True, not_after=NOW + dt.timedelta(days=60))
    cert = _cert(
        f"bastion {name} signer", key, (f"bastion {name} CA", ca_key), ca=False, not_after=until
    )
    return ReleaseKeys(ca, ca_key, cert, key)


def synthetic_bundle(
    keys: ReleaseKeys,
    blocks: int = 300,
    *,
    manifest_edit: str = "",
    version: str = "1.2.3",
    svn: int | None = None,
    golden: bytes | None = None,
    golden_ref: GoldenRef | None = None,
) -> bytes:
    """A verity bundle over ``blocks`` random 4 KiB blocks (no squashfs: the verifier
    checks the tree and the signature, not the file system); ``svn`` goes into
    ``[meta.bastion]``; ``golden`` (a statement) is stored at payload offset 4096 and
    named in ``[meta.bastion-golden]`` (``golden_ref`` overrides what the manifest says)."""
    payload = bytearray(os.urandom(blocks * 4096))
    meta: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    if svn is not None:
        meta.append(("bastion", (("svn", str(svn)),)))
    if golden is not None:
        payload[4096 : 4096 + len(golden)] = golden
        ref = golden_ref or GoldenRef(
            GOLDEN_FILE, hashlib.sha256(golden).hexdigest(), len(golden), 4096
        )
        meta.append(ref.meta())
    salt = os.urandom(32)
    params = verity.VerityParams(data_blocks=blocks, salt=salt)
    tree = verity.build_tree(params, [bytes(payload)])
    manifest = Manifest(
        compatible="bastion-test",
        version=version,
        bundle_format=FORMAT_VERITY,
        images=(ManifestImage("rootfs", "rootfs.img", "ab" * 32, len(payload)),),
        meta=tuple(meta),
    ).with_verity(tree.root_hash, salt, len(tree.hash_area))
    text = manifest.to_bytes() + manifest_edit.encode()
    sig = sign_manifest(text, keys.signer(), keys.cert, [keys.ca])
    return bytes(payload) + tree.hash_area + sig + trailer_bytes(len(sig))
