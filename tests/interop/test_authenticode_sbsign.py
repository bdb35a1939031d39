"""Authenticode against sbsigntool (pesign hashes the image), both ways, on the Debian stub."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from tests.conftest import IN_CI, need_tool

from bastion.errors import DigestMismatchError, FormatError, SignatureError, VerificationError
from bastion.formats.pe import NewSection, PeImage, add_sections
from bastion.trust.authenticode import sign_pe, verify_pe
from bastion.trust.keys import open_signer
from bastion.trust.signer import SignatureScheme

pytestmark = pytest.mark.interop

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


def need_stub() -> bytes:
    """The systemd EFI stub (Debian package systemd-boot-efi), or skip/fail by name."""
    if not STUB.is_file():
        message = f"{STUB} is missing (Debian package 'systemd-boot-efi')"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return STUB.read_bytes()


def _key_and_cert(folder: Path, name: str) -> tuple[Path, Path, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bastion test {name}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path, cert


class Material:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db_key, self.db_crt, self.db = _key_and_cert(folder, "db")
        self.other_key, self.other_crt, self.other = _key_and_cert(folder, "other")
        stub = PeImage.parse(need_stub())
        self.image = add_sections(
            stub,
            [
                NewSection(".osrel", b"ID=bastion\n"),
                NewSection(".cmdline", b"console=ttyS0 quiet\0"),
                NewSection(".linux", bytes(range(256)) * 40),
            ],
        )
        self.unsigned = folder / "uki.efi"
        self.unsigned.write_bytes(self.image)

    def signer(self, key: Path):  # type: ignore[no-untyped-def]
        return open_signer(str(key), scheme=SignatureScheme.RSA_PKCS1V15_SHA256)

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return Material(tmp_path_factory.mktemp("authenticode"))


def sbverify(path: Path, cert: Path) -> int:
    tool = need_tool("sbverify")
    return subprocess.run(
        [tool, "--cert", str(cert), str(path)], capture_output=True, check=False
    ).returncode


def sbsign(m: Material, path: Path, key: Path, cert: Path) -> Path:
    out = path.with_suffix(".sbsigned.efi")
    subprocess.run(
        [
            need_tool("sbsign"),
            "--key",
            str(key),
            "--cert",
            str(cert),
            "--output",
            str(out),
            str(path),
        ],
        capture_output=True,
        check=True,
    )
    return out


def pesign_digest(path: Path) -> str:
    """The Authenticode SHA-256 that pesign computes for the image at ``path``."""
    proc = subprocess.run(
        [need_tool("pesign"), "-h", "-i", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"hash:\s*([0-9a-f]{64})", proc.stdout)
    assert found, proc.stdout + proc.stderr
    return found.group(1)


def test_sbverify_accepts_bastion_signature_and_pesign_hashes_alike(m: Material) -> None:
    signed = m.write("bastion.efi", sign_pe(m.image, m.signer(m.db_key), m.db))
    assert sbverify(signed, m.db_crt) == 0
    assert pesign_digest(signed) == verify_pe(signed.read_bytes(), [m.db]).digest.hex()


def test_bastion_verifies_sbsign_signature(m: Material) -> None:
    signed = sbsign(m, m.unsigned, m.db_key, m.db_crt)
    result = verify_pe(signed.read_bytes(), [m.db])
    assert result.digest.hex() == pesign_digest(signed)
    with pytest.raises(SignatureError):
        verify_pe(signed.read_bytes(), [m.other])


def test_same_signature_bytes_hash_as_sbsign(m: Material) -> None:
    """sbsign and bastion sign the same hash of the same unsigned image."""
    ours = verify_pe(sign_pe(m.image, m.signer(m.db_key), m.db), [m.db]).digest
    theirs = verify_pe(sbsign(m, m.unsigned, m.db_key, m.db_crt).read_bytes(), [m.db]).digest
    assert ours == theirs


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def _cases(m: Material, signed: bytes) -> dict[str, tuple[bytes, Path, type[Exception]]]:
    img = PeImage.parse(signed)
    linux = img.section(".linux")
    assert linux is not None
    table = img.security_directory.address
    return {
        "flipped byte in a section": (
            _flip(signed, linux.pointer_to_raw_data + 7),
            m.db_crt,
            DigestMismatchError,
        ),
        "flipped byte in the headers": (
            _flip(signed, 0x80 + 24 + 4),
            m.db_crt,
            DigestMismatchError,
        ),
        "flipped byte in the signature": (
            _flip(signed, len(signed) - 60),
            m.db_crt,
            SignatureError,
        ),
        "wrong certificate": (signed, m.other_crt, SignatureError),
        "truncated certificate table": (signed[: table + 100], m.db_crt, FormatError),
    }


@pytest.mark.parametrize("who", ["bastion", "sbsign"])
@pytest.mark.parametrize(
    "case",
    [
        "flipped byte in a section",
        "flipped byte in the headers",
        "flipped byte in the signature",
        "wrong certificate",
        "truncated certificate table",
    ],
)
def test_negative_both_tools_refuse(m: Material, who: str, case: str) -> None:
    if who == "bastion":
        signed = sign_pe(m.image, m.signer(m.db_key), m.db)
    else:
        signed = sbsign(m, m.unsigned, m.db_key, m.db_crt).read_bytes()
    data, cert, error = _cases(m, signed)[case]
    path = m.write(f"neg-{who}-{case.replace(' ', '-')}.efi", data)
    assert sbverify(path, cert) != 0
    trusted = x509.load_pem_x509_certificate(cert.read_bytes())
    with pytest.raises(error):
        verify_pe(data, [trusted])
    assert issubclass(error, VerificationError | FormatError)


def test_two_signatures_second_trusted_both_tools_accept(m: Material) -> None:
    """sbverify, like UEFI and bastion, admits an image if any signature is trusted."""
    first = sign_pe(m.image, m.signer(m.other_key), m.other)
    both = sign_pe(first, m.signer(m.db_key), m.db, append=True)
    path = m.write("two.efi", both)
    assert sbverify(path, m.db_crt) == 0
    assert verify_pe(both, [m.db]).index == 1
    only_untrusted = m.write(
        "two-untrusted.efi", sign_pe(first, m.signer(m.other_key), m.other, append=True)
    )
    assert sbverify(only_untrusted, m.db_crt) != 0
    with pytest.raises(SignatureError):
        verify_pe(only_untrusted.read_bytes(), [m.db])
