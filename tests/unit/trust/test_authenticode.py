"""Authenticode sign/verify: round trips and the table of negative cases."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.pebuild import make_pe
from tests.unit.trust.conftest import make_key

from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    SignatureError,
    VerificationError,
)
from bastion.formats.pe import PeImage, WinCertificate
from bastion.trust.authenticode import AuthenticodeSignature, sign_pe, verify_pe
from bastion.trust.signer import PrivateKey, SignatureScheme, SoftwareSigner


def _cert(
    key: PrivateKey, cn: str, issuer_key: PrivateKey | None = None, issuer_cn: str | None = None
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn or cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(issuer_key or key, hashes.SHA256())  # type: ignore[arg-type]
    )


RSA = make_key("rsa-2048", 0)
RSA_OTHER = make_key("rsa-2048", 1)
EC = make_key("ecdsa-p256", 0)
EC384 = make_key("ecdsa-p384", 0)
DB = _cert(RSA, "db")
OTHER = _cert(RSA_OTHER, "other")
RSA_SIGNER = SoftwareSigner(RSA, SignatureScheme.RSA_PKCS1V15_SHA256)
OTHER_SIGNER = SoftwareSigner(RSA_OTHER, SignatureScheme.RSA_PKCS1V15_SHA256)
IMAGE = make_pe(trailing=b"odd")
SIGNED = sign_pe(IMAGE, RSA_SIGNER, DB)


def test_rsa_round_trip() -> None:
    result = verify_pe(SIGNED, [DB])
    assert result.index == 0 and result.anchor == DB and result.signer == DB
    assert result.digest == PeImage.parse(IMAGE).prepared_for_signing().authenticode_digest()
    assert result.failures == ()


def test_rsa_signature_is_reproducible() -> None:
    assert sign_pe(IMAGE, RSA_SIGNER, DB) == SIGNED


@pytest.mark.parametrize(
    ("key", "scheme"),
    [(EC, SignatureScheme.ECDSA_P256_SHA256), (EC384, SignatureScheme.ECDSA_P384_SHA384)],
)
def test_ecdsa_round_trip(key: PrivateKey, scheme: SignatureScheme) -> None:
    cert = _cert(key, "ec db")
    signed = sign_pe(IMAGE, SoftwareSigner(key, scheme), cert)
    result = verify_pe(signed, [cert])
    assert result.hash_name == (scheme.hash_name or "")


def test_resigning_replaces_the_signature() -> None:
    again = PeImage.parse(sign_pe(SIGNED, OTHER_SIGNER, OTHER))
    assert len(again.certificates) == 1
    assert verify_pe(again, [OTHER]).signer == OTHER


def test_chain_through_an_intermediate_carried_in_the_signature() -> None:
    root = _cert(RSA, "root")
    leaf_key = make_key("rsa-2048", 2)
    leaf = _cert(leaf_key, "leaf", issuer_key=RSA_OTHER, issuer_cn="intermediate")
    intermediate = _cert(RSA_OTHER, "intermediate", issuer_key=RSA, issuer_cn="root")
    leaf_signer = SoftwareSigner(leaf_key, SignatureScheme.RSA_PKCS1V15_SHA256)
    signed = sign_pe(IMAGE, leaf_signer, leaf, chain=[intermediate])
    assert verify_pe(signed, [root]).anchor == root
    assert verify_pe(signed, [intermediate]).anchor == intermediate
    without_chain = sign_pe(IMAGE, leaf_signer, leaf)
    with pytest.raises(SignatureError, match="does not chain"):
        verify_pe(without_chain, [root])


def test_two_signatures_only_the_second_trusted_is_accepted() -> None:
    """UEFI semantics: any signature that chains to db admits the image (ADR 0016)."""
    untrusted_first = sign_pe(sign_pe(IMAGE, OTHER_SIGNER, OTHER), RSA_SIGNER, DB, append=True)
    result = verify_pe(untrusted_first, [DB])
    assert result.index == 1
    assert len(result.failures) == 1 and result.failures[0][0] == 0
    assert "does not chain" in result.failures[0][1]


def test_two_untrusted_signatures_list_both_failures() -> None:
    both = sign_pe(sign_pe(IMAGE, OTHER_SIGNER, OTHER), OTHER_SIGNER, OTHER, append=True)
    with pytest.raises(SignatureError, match=r"none of the 2 .*#0: .*#1: "):
        verify_pe(both, [DB])


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


_SIG_IMG = PeImage.parse(SIGNED)
_SIG_AT = _SIG_IMG.security_directory.address
_TEXT = _SIG_IMG.sections[0]
_DER = _SIG_IMG.certificates[0].certificate
_SIG_VALUE_AT = _SIG_AT + 8 + _DER.index(AuthenticodeSignature.parse(_DER).signature[:16])


def _entry(revision: int, cert_type: int) -> bytes:
    return _SIG_IMG.with_certificates([WinCertificate(_DER, revision, cert_type)])


NEGATIVE: dict[str, tuple[bytes, list[x509.Certificate], type[Exception]]] = {
    "flipped byte in a section": (
        _flip(SIGNED, _TEXT.pointer_to_raw_data + 3),
        [DB],
        DigestMismatchError,
    ),
    "flipped byte in the headers": (_flip(SIGNED, 0x80 + 24 + 2), [DB], DigestMismatchError),
    "flipped byte in trailing data": (_flip(SIGNED, _SIG_AT - 6), [DB], DigestMismatchError),
    "flipped byte in the signature value": (_flip(SIGNED, _SIG_VALUE_AT + 5), [DB], SignatureError),
    "flipped byte in the signed digest": (
        _flip(SIGNED, _SIG_AT + 8 + _DER.index(_SIG_IMG.authenticode_digest()) + 1),
        [DB],
        DigestMismatchError,
    ),
    "wrong certificate in db": (SIGNED, [OTHER], SignatureError),
    "signer not in db (empty db)": (SIGNED, [], SignatureError),
    "unsigned image": (IMAGE, [DB], SignatureError),
    "truncated certificate table": (SIGNED[:-20], [DB], FormatError),
    "certificate entry cut short": (
        _SIG_IMG.with_certificates([WinCertificate(_DER[:-40])]),
        [DB],
        SignatureError,
    ),
    "carried certificate with X.509 version 2": (
        _SIG_IMG.with_certificates(
            [WinCertificate(_DER.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x01", 1))]
        ),
        [DB],
        SignatureError,
    ),
    "wrong WIN_CERTIFICATE type": (_entry(0x200, 0x0001), [DB], SignatureError),
    "wrong WIN_CERTIFICATE revision": (_entry(0x100, 0x0002), [DB], SignatureError),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_negative(case: str) -> None:
    data, db, error = NEGATIVE[case]
    with pytest.raises(error):
        verify_pe(data, db)


def test_signer_with_pss_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="PKCS#1"):
        sign_pe(IMAGE, SoftwareSigner(RSA, SignatureScheme.RSA_PSS_SHA256), DB)


def test_certificate_of_another_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="public key"):
        sign_pe(IMAGE, RSA_SIGNER, OTHER)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_DER) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_signature_fails_closed(edits: list[tuple[int, int]]) -> None:
    der = bytearray(_DER)
    for at, value in edits:
        der[at] = value
    data = _SIG_IMG.with_certificates([WinCertificate(bytes(der))])
    try:
        result = verify_pe(data, [DB])
    except (FormatError, VerificationError):
        return
    # whatever an edit left accepted, the security facts are unchanged
    assert result.digest == _SIG_IMG.authenticode_digest()
    assert result.signer == DB
