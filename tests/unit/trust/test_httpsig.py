"""RFC 9421 device request signatures (trust/httpsig.py, ADR 0032): the negative table."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from http_message_signatures import algorithms

from bastion import limits
from bastion.errors import ExpiredError, FormatError, SignatureError
from bastion.trust import httpsig

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())


def _signer(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    def sign(base: bytes) -> bytes:
        der = key.sign(base, ec.ECDSA(hashes.SHA256()))
        return algorithms.ECDSA_P256_SHA256.signature_from_der(der)

    return sign


def _signed(**kw: Any) -> dict[str, str]:
    args: dict[str, Any] = {
        "key_id": "dev1",
        "created": int(NOW.timestamp()),
        "nonce": "n-1",
        "sign": _signer(KEY),
    }
    args.update(kw)
    return httpsig.sign_request("POST", "/v1/device/heartbeat?x=1", b'{"a":1}', **args)


def _verify(headers: dict[str, str], **kw: Any) -> httpsig.SignedRequest:
    args: dict[str, Any] = {
        "method": "POST",
        "target": "/v1/device/heartbeat?x=1",
        "headers": headers,
        "public_key": KEY.public_key(),
        "key_id": "dev1",
        "now": NOW,
    }
    args.update(kw)
    return httpsig.verify_request(**args)


def test_a_good_signature_verifies_and_names_its_signer() -> None:
    headers = _signed()
    assert httpsig.signed_key_id(headers) == "dev1"
    found = _verify(headers)
    assert (found.key_id, found.nonce, found.created) == ("dev1", "n-1", int(NOW.timestamp()))
    httpsig.check_content_digest(headers["Content-Digest"], b'{"a":1}')
    assert 'tag="bastion-device"' in headers["Signature-Input"]
    for name in ("@method", "@path", "@query", "content-digest"):
        assert f'"{name}"' in headers["Signature-Input"]


def _flip_signature(h: dict[str, str]) -> dict[str, str]:
    value = h["Signature"]
    i = value.index(":") + 5
    return {**h, "Signature": value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]}


NEGATIVE: list[tuple[str, Callable[[], Any], type[Exception]]] = [
    ("another key", lambda: _verify(_signed(sign=_signer(OTHER))), SignatureError),
    ("another method", lambda: _verify(_signed(), method="PUT"), SignatureError),
    ("another path", lambda: _verify(_signed(), target="/v1/device/logs?x=1"), SignatureError),
    (
        "another query",
        lambda: _verify(_signed(), target="/v1/device/heartbeat?x=2"),
        SignatureError,
    ),
    ("another keyid", lambda: _verify(_signed(key_id="dev2")), SignatureError),
    ("one flipped bit", lambda: _verify(_flip_signature(_signed())), SignatureError),
    (
        "digest swapped",
        lambda: _verify({**_signed(), "Content-Digest": httpsig.content_digest(b"other")}),
        SignatureError,
    ),
    (
        "too old",
        lambda: _verify(_signed(created=int(NOW.timestamp()) - 301)),
        ExpiredError,
    ),
    (
        "from the future",
        lambda: _verify(_signed(created=int(NOW.timestamp()) + 301)),
        ExpiredError,
    ),
    ("no signature header", lambda: _verify({**_signed(), "Signature": ""} | {}), SignatureError),
    (
        "signature header missing",
        lambda: _verify({k: v for k, v in _signed().items() if k != "Signature"}),
        SignatureError,
    ),
    (
        "oversize header",
        lambda: _verify({**_signed(), "Signature-Input": "a" * 5000}),
        FormatError,
    ),
    (
        "not a P-256 key",
        lambda: _verify(_signed(), public_key=ec.generate_private_key(ec.SECP384R1()).public_key()),
        SignatureError,
    ),
    ("relative target", lambda: _verify(_signed(), target="v1/device"), FormatError),
]


@pytest.mark.parametrize(("name", "call", "error"), NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_refusals(name: str, call: Callable[[], Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


def test_uncovered_component_is_refused() -> None:
    headers = _signed()
    headers["Signature-Input"] = headers["Signature-Input"].replace(' "@query"', "")
    with pytest.raises(SignatureError):
        _verify(headers)


def test_content_digest_must_match_the_body() -> None:
    value = httpsig.content_digest(b"body")
    httpsig.check_content_digest(value, b"body")
    with pytest.raises(SignatureError, match="does not match"):
        httpsig.check_content_digest(value, b"bodY")
    with pytest.raises(SignatureError, match="sha-256"):
        httpsig.check_content_digest("sha-512=:AAAA:", b"body")
    with pytest.raises(FormatError):
        httpsig.check_content_digest("((", b"body")


# -- the agent's nonces (ADR 0050) -------------------------------------------------------


@pytest.mark.parametrize(
    "at", [-0.001, 16**httpsig.NONCE_TIME_DIGITS / 1000, float("nan"), float("inf")]
)
def test_a_nonce_for_a_time_out_of_range_is_refused(at: float) -> None:
    with pytest.raises(FormatError, match="out of range"):
        httpsig.request_nonce(at)


def test_a_nonce_is_its_millisecond_in_hex_then_128_random_bits() -> None:
    at = NOW.timestamp() + 0.123
    nonce = httpsig.request_nonce(at)
    assert re.fullmatch(r"[0-9a-f]{12}[A-Za-z0-9_-]{22}", nonce)
    assert int(nonce[:12], 16) == int(at * 1000)
    assert len(nonce) <= limits.DEVICE_SIGNATURE_MAX_NONCE
    assert len({httpsig.request_nonce(at) for _ in range(1000)}) == 1000  # same time: unique


def test_nonces_sort_by_the_time_they_were_made() -> None:
    times = [0.0, 0.001, 0.999, 1.0, 255.999, 4096.0, NOW.timestamp(), NOW.timestamp() + 0.001]
    nonces = [httpsig.request_nonce(t) for t in times]
    assert sorted(nonces) == nonces


def test_a_request_signed_with_the_agents_nonce_takes_the_canonical_path() -> None:
    nonce = httpsig.request_nonce(NOW.timestamp())
    headers = _signed(nonce=nonce)
    assert httpsig.canonical_base("POST", "/v1/device/heartbeat?x=1", headers) is not None
    assert _verify(headers).nonce == nonce
