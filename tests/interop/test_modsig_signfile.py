"""Module signatures against the kernel's sign-file and openssl cms, both directions."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.conftest import need_tool

from bastion.errors import FormatError, SignatureError
from bastion.formats.modsig import SignedModule, verify_module
from bastion.io.runner import find_tool
from bastion.trust.signer import SignatureScheme, SoftwareSigner

pytestmark = pytest.mark.interop

SIGN_FILE_DIR = "/usr/lib/linux-kbuild-6.1/scripts"


def _sign_file() -> str:
    return find_tool("sign-file", (SIGN_FILE_DIR,)) or need_tool("sign-file")


@pytest.fixture(scope="module")
def material(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, rsa.RSAPrivateKey, x509.Certificate]:
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
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return folder, key, cert


@pytest.mark.parametrize("h", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("size", [1, 4096, 300_001])
def test_bastion_equals_sign_file(material, h: str, size: int) -> None:
    folder, key, cert = material
    module = os.urandom(size)
    (folder / "m.ko").write_bytes(module)
    subprocess.run(
        [
            _sign_file(),
            h,
            str(folder / "key.pem"),
            str(folder / "cert.der"),
            str(folder / "m.ko"),
            str(folder / "ref.ko"),
        ],
        check=True,
    )
    reference = (folder / "ref.ko").read_bytes()
    from bastion.formats.modsig import sign_module

    scheme = SignatureScheme(f"rsa-pkcs1v15-{h}")
    ours = sign_module(module, cert, SoftwareSigner(key, scheme).sign, h)
    assert ours == reference
    assert verify_module(reference, cert).module == module


def test_openssl_cms_verifies_bastion_signature(material) -> None:
    openssl = need_tool("openssl")
    folder, key, cert = material
    from bastion.formats.modsig import sign_module

    module = os.urandom(10_000)
    signed = SignedModule.parse(
        sign_module(module, cert, SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256).sign)
    )
    (folder / "c.ko").write_bytes(module)
    (folder / "c.p7s").write_bytes(signed.signature)
    ok = subprocess.run(
        [
            openssl,
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(folder / "c.p7s"),
            "-content",
            str(folder / "c.ko"),
            "-certfile",
            str(folder / "cert.pem"),
            "-nointern",
            "-noverify",
            "-out",
            os.devnull,
        ],
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    (folder / "c.ko").write_bytes(module[:-1] + bytes([module[-1] ^ 1]))
    bad = subprocess.run(
        [
            openssl,
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(folder / "c.p7s"),
            "-content",
            str(folder / "c.ko"),
            "-certfile",
            str(folder / "cert.pem"),
            "-nointern",
            "-noverify",
            "-out",
            os.devnull,
        ],
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0


def test_flipped_bit_in_sign_file_output_refused(material) -> None:
    folder, _key, cert = material
    module = os.urandom(2000)
    (folder / "f.ko").write_bytes(module)
    subprocess.run(
        [
            _sign_file(),
            "sha256",
            str(folder / "key.pem"),
            str(folder / "cert.der"),
            str(folder / "f.ko"),
            str(folder / "f.signed.ko"),
        ],
        check=True,
    )
    data = (folder / "f.signed.ko").read_bytes()
    for pos in range(0, len(data), 7):
        bad = bytearray(data)
        bad[pos] ^= 0x80
        with pytest.raises((SignatureError, FormatError)):
            verify_module(bytes(bad), cert)
