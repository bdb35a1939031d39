"""Hypothesis: any change to a signed update is refused with a BastionError, never passes."""

from __future__ import annotations

import dataclasses
import functools
import uuid

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import BastionError
from bastion.formats import efivars as ev
from bastion.formats.pkcs7_signed import OID_RSA, OID_SHA256_WITH_RSA, SignedData
from bastion.trust import secureboot as sb
from bastion.trust.signer import SoftwareSigner

OWNER = uuid.UUID("5a1c7e5a-0000-4000-8000-00000000c0de")
T = ev.EfiTime(2026, 3, 4, 5, 6, 7)


@functools.cache
def _material() -> tuple[dict[str, x509.Certificate], dict[str, bytes]]:
    signers = {
        n: SoftwareSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        for n in ("PK", "KEK", "db")
    }
    certs = {n: sb.create_certificate(s, n, "prop") for n, s in signers.items()}
    esl = {n: ev.encode_signature_lists([sb.certificate_list(OWNER, c)]) for n, c in certs.items()}
    by = {"PK": "PK", "KEK": "PK", "db": "KEK"}
    auths = {n: sb.sign_update(n, esl[n], signers[by[n]], certs[by[n]], T).to_bytes() for n in by}
    return certs, auths


def _verify(variable: str, data: bytes, setup_mode: bool = False) -> None:
    certs, _ = _material()
    if setup_mode:  # PK verified against the certificate it carries
        sb.verify_update(variable, data, pk=None)
    else:
        sb.verify_update(variable, data, pk=certs["PK"], kek=[certs["KEK"]])


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([("PK", True), ("PK", False), ("KEK", False), ("db", False)]),
    st.integers(0, 10**6),
    st.integers(1, 255),
)
def test_any_changed_byte_is_refused(case: tuple[str, bool], pos: int, xor: int) -> None:
    variable, setup_mode = case
    _, auths = _material()
    good = auths[variable]
    _verify(variable, good, setup_mode)
    raw = bytearray(good)
    raw[pos % len(raw)] ^= xor
    try:
        _verify(variable, bytes(raw), setup_mode)
    except BastionError:
        return
    # The one change that may verify: rsaEncryption <-> sha256WithRSAEncryption as the
    # signature algorithm (both name the same PKCS#1 v1.5 signature; both are accepted).
    mine = SignedData.parse(ev.AuthenticatedVariable.parse(good).signed_data)
    theirs = SignedData.parse(ev.AuthenticatedVariable.parse(bytes(raw)).signed_data)
    si = theirs.signer_infos[0]
    assert si.signature_oid in (OID_RSA, OID_SHA256_WITH_RSA)
    same = dataclasses.replace(si, signature_oid=mine.signer_infos[0].signature_oid)
    assert dataclasses.replace(theirs, signer_infos=(same,)) == mine


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["PK", "KEK", "db"]), st.integers(0, 3000))
def test_truncations_are_refused(variable: str, cut: int) -> None:
    _, auths = _material()
    good = auths[variable]
    try:
        _verify(variable, good[: cut % len(good)])
    except BastionError:
        return
    raise AssertionError("a truncated update verified")


@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_bastion_errors(data: bytes) -> None:
    try:
        _verify("db", data)
    except BastionError:
        return
    raise AssertionError("random bytes verified")
