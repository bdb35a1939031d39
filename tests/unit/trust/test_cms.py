"""The X.509 helpers shared by the CMS verifiers: a table of negative cases each."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from bastion.errors import FormatError, SignatureError
from bastion.limits import CERT_CHAIN_MAX_DEPTH
from bastion.trust.cms import (
    certificate_der,
    chain_to_anchor,
    check_time,
    issued_by,
    load_certificate,
    verifier_for,
)

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)

_Key = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _cert(
    key: _Key,
    cn: str,
    issuer: tuple[_Key, str] | None = None,
    *,
    before: dt.datetime = NOW - DAY,
    after: dt.datetime = NOW + DAY,
) -> x509.Certificate:
    signing_key, issuer_cn = issuer or (key, cn)
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .sign(signing_key, algorithm)
    )


ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
MID_KEY = ec.generate_private_key(ec.SECP256R1())
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
ROOT = _cert(ROOT_KEY, "root")
MID = _cert(MID_KEY, "mid", (ROOT_KEY, "root"))
LEAF = _cert(LEAF_KEY, "leaf", (MID_KEY, "mid"))
OTHER = _cert(OTHER_KEY, "other")
EXPIRED_LEAF = _cert(LEAF_KEY, "leaf", (MID_KEY, "mid"), after=NOW - DAY / 2)
EXPIRED_ROOT = _cert(ROOT_KEY, "root", before=NOW - 2 * DAY, after=NOW - DAY)
LEAF_DER = certificate_der(LEAF)


def test_shared_helpers_accept_a_good_chain() -> None:
    assert load_certificate(LEAF_DER, "test") == LEAF
    assert issued_by(LEAF, MID) and issued_by(MID, ROOT)
    assert chain_to_anchor(LEAF, [MID], [ROOT], "test", trusted_name="db", now=NOW) == ROOT
    assert chain_to_anchor(LEAF, [], [LEAF], "test", trusted_name="db", now=NOW) == LEAF
    signature = LEAF_KEY.sign(b"signed", ec.ECDSA(hashes.SHA256()))
    verifier_for(LEAF, "sha256", "test").verify(b"signed", signature)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x30\x00", b"\x30\x03\x02\x01\x00", LEAF_DER[:-1], LEAF_DER[:40], b"not DER"],
    ids=["empty", "empty-sequence", "not-a-certificate", "one-byte-short", "truncated", "text"],
)
def test_load_certificate_refuses_bad_der(data: bytes) -> None:
    with pytest.raises(FormatError, match=r"^bundle signature carries a bad certificate: "):
        load_certificate(data, "bundle")


ED_CERT = _cert(ed25519.Ed25519PrivateKey.generate(), "ed25519")
P521_CERT = _cert(ec.generate_private_key(ec.SECP521R1()), "p521")


@pytest.mark.parametrize(
    ("cert", "hash_name", "scheme_what", "message"),
    [
        (ED_CERT, "sha256", None, "^X signer key Ed25519PublicKey is not RSA or ECDSA$"),
        (LEAF, "sha512", None, "^X: a secp256r1 key with sha512 is not supported$"),
        (LEAF, "md5", None, "^X: a secp256r1 key with md5 is not supported$"),
        (P521_CERT, "sha512", None, "^X: a secp521r1 key with sha512 is not supported$"),
        (LEAF, "sha384", "X sig", "^X sig: a secp256r1 key with sha384 is not supported$"),
    ],
    ids=["ed25519", "p256-sha512", "md5", "p521", "scheme-label"],
)
def test_verifier_for_refuses_unsupported_key_or_hash(
    cert: x509.Certificate, hash_name: str, scheme_what: str | None, message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        verifier_for(cert, hash_name, "X", scheme_what=scheme_what)


def test_verifier_for_refuses_a_scheme_missing_from_the_given_table() -> None:
    with pytest.raises(SignatureError, match="secp256r1 key with sha256 is not supported"):
        verifier_for(LEAF, "sha256", "X", {})


@pytest.mark.parametrize(
    ("signer", "pool", "trusted", "now", "message"),
    [
        (LEAF, [MID], [OTHER], None, "does not chain to any of the 1 db certificate"),
        (LEAF, [], [ROOT], None, "does not chain"),  # intermediate not carried
        (LEAF, [MID], [], None, "of the 0 db certificate"),
        (OTHER, [MID, LEAF], [ROOT], None, "'CN=other' does not chain"),
        (EXPIRED_LEAF, [MID], [ROOT], NOW, "X certificate 'CN=leaf' is not valid at"),
        (LEAF, [MID], [EXPIRED_ROOT], NOW, "X certificate 'CN=root' is not valid at"),
        (LEAF, [MID], [ROOT], NOW - 2 * DAY, "'CN=leaf' is not valid at"),  # not yet valid
        (LEAF, [MID], [ROOT], NOW + 2 * DAY, "'CN=leaf' is not valid at"),
    ],
    ids=[
        "other-anchor",
        "missing-intermediate",
        "no-anchor",
        "unrelated-signer",
        "expired-signer",
        "expired-anchor",
        "before-validity",
        "after-validity",
    ],
)
def test_chain_to_anchor_refuses(
    signer: x509.Certificate,
    pool: Sequence[x509.Certificate],
    trusted: Sequence[x509.Certificate],
    now: dt.datetime | None,
    message: str,
) -> None:
    with pytest.raises(SignatureError, match=message):
        chain_to_anchor(signer, pool, trusted, "X", trusted_name="db", now=now)


def test_expired_chain_passes_when_dates_are_not_checked() -> None:
    # Authenticode's rule (firmware has no trusted clock): now=None checks no dates
    assert chain_to_anchor(EXPIRED_LEAF, [MID], [ROOT], "X", trusted_name="db", now=None) == ROOT
    assert chain_to_anchor(LEAF, [MID], [EXPIRED_ROOT], "X", trusted_name="db", now=None)


def test_chain_longer_than_the_depth_limit_is_refused() -> None:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(CERT_CHAIN_MAX_DEPTH + 2)]
    certs = [_cert(keys[0], "c0")]
    for i in range(1, len(keys)):
        certs.append(_cert(keys[i], f"c{i}", (keys[i - 1], f"c{i - 1}")))
    leaf, pool = certs[-1], certs[1:-1]
    with pytest.raises(SignatureError, match="does not chain"):
        chain_to_anchor(leaf, pool, [certs[0]], "X", trusted_name="db", now=NOW)
    # one step shorter reaches the root
    assert chain_to_anchor(certs[-2], certs[1:-2], [certs[0]], "X", trusted_name="db", now=NOW)


@pytest.mark.parametrize(
    ("cert", "issuer"),
    [(LEAF, ROOT), (LEAF, OTHER), (MID, LEAF), (_cert(LEAF_KEY, "leaf", (OTHER_KEY, "mid")), MID)],
    ids=["skips-a-level", "unrelated", "reversed", "same-name-other-key"],
)
def test_issued_by_is_false_for_a_wrong_issuer(
    cert: x509.Certificate, issuer: x509.Certificate
) -> None:
    assert not issued_by(cert, issuer)


@pytest.mark.parametrize("now", [NOW - DAY - dt.timedelta(seconds=1), NOW + DAY + DAY])
def test_check_time_refuses_outside_validity(now: dt.datetime) -> None:
    with pytest.raises(SignatureError, match=r"^bundle certificate 'CN=leaf' is not valid at"):
        check_time(LEAF, now, "bundle")
    check_time(LEAF, NOW, "bundle")
