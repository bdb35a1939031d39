"""Shared helpers for the image and boot tests: a product key set (platform root, boot,
image keys), a tiny root tree, image specs, self-signed certificates.

Keys are generated once per process; everything else is real: real signatures, real
filesystems.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from bastion.build import image as img
from bastion.trust import image as ti
from bastion.trust.signer import SoftwareSigner, Verifier

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


@dataclass(frozen=True)
class ProductKeys:
    """The product keys an image build and a device need: the platform root (fused), the
    boot key (profile signing, delegated by the root) and the image key (disk.img.sig)."""

    platform_root: SoftwareSigner
    boot: SoftwareSigner
    image: SoftwareSigner


@functools.cache
def product_keys(variant: int = 0) -> ProductKeys:
    """A product key set (``variant`` gives an independent one, e.g. an attacker's)."""
    return ProductKeys(
        platform_root=SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
        boot=SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
        image=SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
    )


def trust_of(keys: ProductKeys) -> ti.ImageTrust:
    """The public side of a key set."""
    return ti.ImageTrust(
        platform_root=Verifier.of(keys.platform_root.public_key()),
        image=Verifier.of(keys.image.public_key()),
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
    """An ImageSpec with test defaults (ext4, small data partition)."""
    base: dict[str, object] = dict(
        rootfs=tree,
        kernel=KERNEL,
        initrd=INITRD,
        cmdline="console=ttyS0 quiet",
        version="1.0.0",
        security_version=1,
        data_size=24 * 1024 * 1024,
    )
    base.update(kw)
    return img.ImageSpec(**base)  # type: ignore[arg-type]
