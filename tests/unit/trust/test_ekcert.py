"""EK certificate verification (bastion.trust.ekcert): the accepted case and the
negative table, with EKs from the software TPM and CAs made here."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.errors import ExpiredError, FormatError, SignatureError, VerificationError
from bastion.limits import CERT_MAX_SIZE
from bastion.tpm.quote import public_key
from bastion.tpm.software import SoftwareTpm
from bastion.trust.ekcert import verify_ek_certificate

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _ca(name: str = "Maker CA", *, ca: bool = True, after: dt.datetime = NOW + 99 * DAY) -> Any:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 99 * DAY)
        .not_valid_after(after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return key, builder.sign(key, hashes.SHA256())


def _leaf(
    ca: Any, ek_public: bytes, *, start: dt.datetime = NOW - DAY, end: dt.datetime = NOW + DAY
) -> bytes:
    key, cert = ca
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(cert.subject)
        .public_key(public_key(ek_public))  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.DirectoryName(x509.Name([]))]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return leaf.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def eks(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    base = tmp_path_factory.mktemp("eks")
    return (
        SoftwareTpm(Path(base / "a.state")).ek_public(),
        SoftwareTpm(Path(base / "b.state")).ek_public(),
    )


def test_accepted(eks: tuple[bytes, bytes]) -> None:
    ca = _ca()
    out = verify_ek_certificate(_leaf(ca, eks[0]), eks[0], [_ca("Other")[1], ca[1]], now=NOW)
    assert out.ca_subject == "CN=Maker CA"


def _case(name: str, eks: tuple[bytes, bytes]) -> tuple[bytes, bytes, list[x509.Certificate]]:
    ek, other = eks
    ca = _ca()
    if name == "untrusted CA":
        return _leaf(_ca("Rogue CA"), ek), ek, [ca[1]]
    if name == "same name, other key":
        return _leaf(_ca(), ek), ek, [ca[1]]
    if name == "expired":
        return _leaf(ca, ek, start=NOW - 9 * DAY, end=NOW - DAY), ek, [ca[1]]
    if name == "not yet valid":
        return _leaf(ca, ek, start=NOW + DAY, end=NOW + 9 * DAY), ek, [ca[1]]
    if name == "expired CA":
        old = _ca(after=NOW - DAY)
        return _leaf(old, ek), ek, [old[1]]
    if name == "issuer not a CA":
        leafy = _ca(ca=False)
        return _leaf(leafy, ek), ek, [leafy[1]]
    if name == "another EK's certificate":
        return _leaf(ca, other), ek, [ca[1]]
    if name == "no trusted CA at all":
        return _leaf(ca, ek), ek, []
    if name == "garbage":
        return b"\x30\x03\x02\x01\x00", ek, [ca[1]]
    if name == "oversize":
        return b"\x30" * (CERT_MAX_SIZE + 1), ek, [ca[1]]
    if name == "one flipped bit in the signature":
        der = bytearray(_leaf(ca, ek))
        der[-3] ^= 0x01
        return bytes(der), ek, [ca[1]]
    raise AssertionError(name)


NEGATIVE = [
    ("untrusted CA", VerificationError, "untrusted"),
    ("same name, other key", SignatureError, "does not verify"),
    ("expired", ExpiredError, "expired"),
    ("not yet valid", ExpiredError, "not valid before"),
    ("expired CA", ExpiredError, "EK CA certificate"),
    ("issuer not a CA", VerificationError, "not a CA"),
    ("another EK's certificate", VerificationError, "not the presented EK"),
    ("no trusted CA at all", VerificationError, "untrusted"),
    ("garbage", FormatError, "not an X.509"),
    ("oversize", FormatError, "limit"),
    # the flipped bit is inside the signature value (its last integer): still well formed
    ("one flipped bit in the signature", SignatureError, "does not verify"),
]


@pytest.mark.parametrize(("name", "error", "text"), NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_negative(eks: tuple[bytes, bytes], name: str, error: Any, text: str) -> None:
    cert, ek, anchors = _case(name, eks)
    with pytest.raises(error, match=text):
        verify_ek_certificate(cert, ek, anchors, now=NOW)
