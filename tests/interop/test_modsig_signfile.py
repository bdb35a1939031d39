"""Module signatures against the kernel's sign-file and openssl cms, both directions."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.conftest import need_tool
from tests.interop.conftest import sign_file_tool, write_material

from bastion.errors import FormatError, SignatureError
from bastion.formats.modsig import SignedModule, verify_module
from bastion.trust.signer import SignatureScheme, SoftwareSigner

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("h", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("size", [1, 4096, 300_001])
def test_bastion_equals_sign_file(material, h: str, size: int) -> None:
    folder, key, cert = material
    module = os.urandom(size)
    (folder / "m.ko").write_bytes(module)
    subprocess.run(
        [
            sign_file_tool(),
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
            sign_file_tool(),
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


# --- ECDSA and subjectKeyIdentifier signatures (sign-file with an EC key, sign-file -k) ---

_EC_CURVES = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}


def _cert_for(key, cn: str) -> x509.Certificate:  # type: ignore[no-untyped-def]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def _run_sign_file(folder: Path, h: str, module: bytes, *flags: str) -> bytes:
    (folder / "in.ko").write_bytes(module)
    result = subprocess.run(
        [
            sign_file_tool(),
            *flags,
            h,
            str(folder / "key.pem"),
            str(folder / "cert.der"),
            str(folder / "in.ko"),
            str(folder / "out.ko"),
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return (folder / "out.ko").read_bytes()


def _openssl_verifies(folder: Path, signed: bytes) -> bool:
    sm = SignedModule.parse(signed)
    (folder / "v.ko").write_bytes(sm.module)
    (folder / "v.p7s").write_bytes(sm.signature)
    result = subprocess.run(
        [
            need_tool("openssl"),
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(folder / "v.p7s"),
            "-content",
            str(folder / "v.ko"),
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
    return result.returncode == 0


@pytest.mark.parametrize(
    ("curve", "h"), [("p256", "sha256"), ("p384", "sha384"), ("p256", "sha512")]
)
@pytest.mark.parametrize("key_id", [False, True], ids=["issuer-serial", "skid"])
def test_sign_file_ecdsa_verifies_in_bastion(tmp_path: Path, curve, h, key_id) -> None:
    from bastion.formats.modsig import ALGO_ECDSA, sign_module

    key = ec.generate_private_key(_EC_CURVES[curve])
    cert = _cert_for(key, f"ec {curve}")
    write_material(tmp_path, key, cert)
    module = os.urandom(5000)
    reference = _run_sign_file(tmp_path, h, module, *(["-k"] if key_id else []))
    signed = verify_module(reference, cert)
    cms = signed.cms()
    assert signed.module == module
    assert (cms.key_algorithm, cms.hash_name, bool(cms.subject_key_id)) == (ALGO_ECDSA, h, key_id)
    # our encoder writes sign-file's exact bytes for the same signature value
    assert cms.to_bytes() == signed.signature
    # other direction: bastion signs with the EC key, openssl cms verifies it
    ours = sign_module(
        module,
        cert,
        lambda m: key.sign(m, ec.ECDSA(getattr(hashes, h.upper())())),
        h,
        use_key_id=key_id,
    )
    assert verify_module(ours, cert).module == module
    assert _openssl_verifies(tmp_path, ours)
    # a flipped module byte, and another EC key with the same name, are refused
    with pytest.raises(SignatureError):
        verify_module(bytes([module[0] ^ 1]) + reference[1:], cert)
    other = ec.generate_private_key(_EC_CURVES[curve])
    with pytest.raises(SignatureError):
        verify_module(reference, _cert_for(other, f"ec {curve}"))


@pytest.mark.parametrize("h", ["sha256", "sha512"])
def test_sign_file_k_rsa_equals_bastion(material, h: str) -> None:
    """RSA signatures are deterministic: bastion -k output is sign-file -k output, byte for byte."""
    from bastion.formats.modsig import sign_module

    _folder, key, _cert = material
    cert = _cert_for(key, "rsa skid")
    folder = _folder / f"k-{h}"
    write_material(folder, key, cert)
    module = os.urandom(3000)
    reference = _run_sign_file(folder, h, module, "-k")
    scheme = SignatureScheme(f"rsa-pkcs1v15-{h}")
    ours = sign_module(module, cert, SoftwareSigner(key, scheme).sign, h, use_key_id=True)
    assert ours == reference
    assert verify_module(reference, cert).cms().subject_key_id == (
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    assert _openssl_verifies(folder, ours)


@pytest.mark.parametrize(("h", "flags"), [("sha1", ()), ("md5", ()), ("sha1", ("-k",))])
def test_sign_file_weak_hashes_refused_by_name(material, h: str, flags) -> None:
    folder, key, cert = material
    if "-k" in flags:
        cert = _cert_for(key, "rsa skid weak")
        folder = folder / "weak-k"
        write_material(folder, key, cert)
    weak = _run_sign_file(folder, h, os.urandom(1000), *flags)
    with pytest.raises(FormatError, match=f"{h} is refused"):
        verify_module(weak, cert)
