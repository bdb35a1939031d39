"""Shared helpers for the boot-chain tests: a product key set, a tiny root tree, images.

Keys are generated once per process (RSA-2048 for the verity and module certificates
keeps generation fast); everything else is real: real signatures, real filesystems.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from bastion.build import image as img
from bastion.trust import image as ti
from bastion.trust.signer import SignatureScheme, SoftwareSigner, Verifier

KERNEL = b"\x7fELF-not-really-a-kernel " * 40
INITRD = b"070701 initrd " * 30


def _cert(key: rsa.RSAPrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x1234 + len(cn))
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )


@functools.cache
def product_keys(variant: int = 0) -> img.ImageKeys:
    """A product key set (``variant`` gives an independent one, e.g. an attacker's)."""
    verity = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    module = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return img.ImageKeys(
        platform_root=SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
        boot=SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
        image=SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
        verity=SoftwareSigner(verity, SignatureScheme.RSA_PKCS1V15_SHA256),
        verity_cert=_cert(verity, f"verity {variant}"),
        module=SoftwareSigner(module, SignatureScheme.RSA_PKCS1V15_SHA256),
        module_cert=_cert(module, f"modules {variant}"),
    )


def trust_of(keys: img.ImageKeys) -> ti.ImageTrust:
    """The public side of a key set."""
    return ti.ImageTrust(
        platform_root=Verifier.of(keys.platform_root.public_key()),
        boot=Verifier.of(keys.boot.public_key()),
        image=Verifier.of(keys.image.public_key()),
        verity_cert=keys.verity_cert,
        module_cert=keys.module_cert,
    )


def make_tree(root: Path, *, payload: int = 0) -> Path:
    """A tiny root filesystem tree (``payload`` extra bytes of deterministic data)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "os-release").write_text('ID=bastion\nVERSION_ID="1"\n')
    (root / "sbin").mkdir(exist_ok=True)
    (root / "sbin" / "init").write_bytes(b"#!/bin/sh\nexec /bin/app\n")
    (root / "usr").mkdir(exist_ok=True)
    data = bytes((i * 7 + 3) % 251 for i in range(4096))
    (root / "usr" / "payload.bin").write_bytes(data * (payload // 4096 + 1))
    return root


def spec_for(tree: Path, **kw: object) -> img.ImageSpec:
    """An ImageSpec with test defaults (ext4, small data partition, one module)."""
    base: dict[str, object] = dict(
        rootfs=tree,
        kernel=KERNEL,
        initrd=INITRD,
        cmdline="console=ttyS0 quiet",
        modules=(("dummy.ko", b"\x7fELF module bytes " * 20),),
        version="1.0.0",
        security_version=1,
        data_size=24 * 1024 * 1024,
    )
    base.update(kw)
    return img.ImageSpec(**base)  # type: ignore[arg-type]
