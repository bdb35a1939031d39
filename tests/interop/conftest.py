"""Shared by the interop tests: the kernel's ``sign-file`` and a module signing key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.conftest import need_tool

from bastion.io.runner import find_tool

#: where Debian's linux-kbuild package keeps sign-file (not on PATH)
SIGN_FILE_DIR = "/usr/lib/linux-kbuild-6.1/scripts"


def sign_file_tool() -> str:
    """The kernel's ``sign-file`` (skip, or fail in CI, naming its package when missing)."""
    return find_tool("sign-file", (SIGN_FILE_DIR,)) or need_tool("sign-file")


@pytest.fixture(scope="module")
def material(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, rsa.RSAPrivateKey, x509.Certificate]:
    """A module signing key and certificate (RSA-3072, codeSigning), written as
    ``key.pem``, ``cert.pem`` and ``cert.der`` in a folder: (folder, key, cert)."""
    folder = tmp_path_factory.mktemp("modsig")
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bastion interop module key")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_material(folder, key, cert)
    return folder, key, cert


def write_material(folder: Path, key: Any, cert: x509.Certificate) -> None:
    """``key.pem`` (PKCS#8), ``cert.pem`` and ``cert.der`` in ``folder``, as sign-file and
    openssl take them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
