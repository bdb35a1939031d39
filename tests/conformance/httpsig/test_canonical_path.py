"""bastion's canonical signature base equals the library's, and its verdicts equal the
library's (ADR 0049; see README.md here)."""

from __future__ import annotations

import datetime as dt
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from http_message_signatures import HTTPMessageSigner, algorithms
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bastion.errors import BastionError, FormatError
from bastion.trust import httpsig

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
CREATED = int(NOW.timestamp())
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())
BODY = b'{"agent_version":"1.0"}'

#: targets at the edges of the canonical form; "canonical" says whether it is one
TARGETS: list[tuple[str, bool]] = [
    ("/", True),
    ("/v1/device", True),
    ("/v1/device/", True),
    ("/v1/device/heartbeat", True),
    ("/v1/device?x=1", True),
    ("/v1/device?", True),
    ("/v1/device?a=1&b=2", True),
    ("/v1/device?a=1&a=2&=&&", True),
    ("/v1/a.b/c_d/e~f/g-h", True),
    ("/v1/.hidden", False),
    ("/v1//device", False),
    ("/v1/./device", False),
    ("/v1/../device", False),
    ("/v1/%41", False),
    ("/v1/a%2Fb", False),
    ("/v1/device?q=%20", False),
    ("/v1/device?q=a+b", False),
    ("/v1/device?q=a:b", False),
    ("/v1/a:b", False),
    ("/v1/a@b", False),
    ("/v1/a!b$c'd(e)f*g,h;i", False),
    ("/v1/device?x=1?y=2", False),
    ("/v1/device?/x", False),
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
KEY_IDS = ["dev1", "0123456789abcdef" * 4, "a.b:c_d-e", 'qu"ote', "back\\slash", "sp ace", "é"]
NONCES = ["n", "n" * 64, "A-b_c.d~e", "x" * 65, "sl/ash", "pl+us", 'qu"ote']


def _signer(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    def sign(base: bytes) -> bytes:
        der = key.sign(base, ec.ECDSA(hashes.SHA256()))
        return algorithms.ECDSA_P256_SHA256.signature_from_der(der)

    return sign


def sign(
    method: str,
    target: str,
    *,
    key_id: str = "dev1",
    nonce: str = "n-1",
    key: ec.EllipticCurvePrivateKey = KEY,
    body: bytes = BODY,
) -> dict[str, str]:
    return httpsig.sign_request(
        method, target, body, key_id=key_id, created=CREATED, nonce=nonce, sign=_signer(key)
    )


def library_base(method: str, target: str, key_id: str, nonce: str) -> bytes:
    """The signature base the library builds for this request (the reference)."""
    message = httpsig._Message(
        method.upper(), httpsig._ORIGIN + target, {"Content-Digest": httpsig.content_digest(BODY)}
    )
    prepared = HTTPMessageSigner(signature_algorithm=algorithms.ECDSA_P256_SHA256).prepare(
        message,
        key_id=key_id,
        created=dt.datetime.fromtimestamp(CREATED, dt.UTC),
        nonce=nonce,
        label=httpsig.LABEL,
        tag=httpsig.TAG,
        covered_component_ids=httpsig.COMPONENTS,
        use_existing_digest=True,
    )
    base = prepared.signature_base
    return base if isinstance(base, bytes) else base.encode()


@contextmanager
def library_only() -> Iterator[None]:
    """verify_request with the canonical path switched off: the library judges all."""
    saved = httpsig.canonical_base
    httpsig.canonical_base = lambda *_a, **_k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        httpsig.canonical_base = saved  # type: ignore[assignment]


def verdict(method: str, target: str, headers: dict[str, str], key_id: str) -> Any:
    """What verify_request says: (signer, created, nonce) or the exception's class."""
    try:
        found = httpsig.verify_request(method, target, headers, KEY.public_key(), key_id, NOW)
    except BastionError as exc:
        return type(exc)
    return (found.key_id, found.created, found.nonce)


def both(method: str, target: str, headers: dict[str, str], key_id: str = "dev1") -> Any:
    """The verdict of both paths; fails unless they are the same."""
    ours = verdict(method, target, headers, key_id)
    with library_only():
        theirs = verdict(method, target, headers, key_id)
    assert ours == theirs, (method, target, headers)
    return ours


#: edits that leave the same signature valid: the library accepts them (they are not in
#: the canonical form, so bastion's path hands them to the library)
STILL_VALID = {"spaces in parameters", "second signature", "signature padded wrong"}


def _flip(value: str) -> str:
    i = value.index(":") + 7
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]


def mutations(headers: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each way of editing a signed request's headers, by name."""
    si, sig = headers["Signature-Input"], headers["Signature"]
    params = si[si.index(";") :]
    reordered = si.replace(';alg="ecdsa-p256-sha256"', "").replace(
        ";tag=", ';alg="ecdsa-p256-sha256";tag='
    )
    return {
        "flipped signature bit": {**headers, "Signature": _flip(sig)},
        "other key": {**headers, "Signature": sig},  # filled by the caller
        "other digest": {**headers, "Content-Digest": httpsig.content_digest(b"other")},
        "reordered parameters": {**headers, "Signature-Input": reordered},
        "added expires": {**headers, "Signature-Input": si + f";expires={CREATED + 60}"},
        "spaces in parameters": {**headers, "Signature-Input": si.replace(";", "; ")},
        "another keyid": {**headers, "Signature-Input": si.replace(';keyid="', ';keyid="x')},
        "created moved": {
            **headers,
            "Signature-Input": si.replace(f"created={CREATED}", f"created={CREATED + 1}"),
        },
        "second signature": {
            **headers,
            "Signature-Input": si + ", other=" + si.split("=", 1)[1],
            "Signature": sig + ", other=" + sig.split("=", 1)[1],
        },
        "other label only": {
            **headers,
            "Signature-Input": "other=" + si.split("=", 1)[1],
            "Signature": "other=" + sig.split("=", 1)[1],
        },
        "no query component": {
            **headers,
            "Signature-Input": si.replace(' "@query"', ""),
        },
        "signature padded wrong": {**headers, "Signature": sig.replace("==:", "=:")},
        "lower-case label": {**headers, "Signature-Input": si.replace("bastion=", "Bastion=", 1)},
        "parameters only": {**headers, "Signature-Input": "bastion=()" + params},
    }


@pytest.mark.parametrize(("target", "canonical"), TARGETS, ids=[t for t, _ in TARGETS])
@pytest.mark.parametrize("method", METHODS)
def test_base_and_verdicts_equal_the_library(method: str, target: str, canonical: bool) -> None:
    headers = sign(method, target)
    got = httpsig.canonical_base(method, target, headers)
    want_canonical = canonical and method != "OPTIONS"
    assert (got is not None) == want_canonical, (method, target)
    if got is not None:
        assert got.base == library_base(method, target, "dev1", "n-1")
        assert (got.key_id, got.created, got.nonce) == ("dev1", CREATED, "n-1")
    assert both(method, target, headers) == ("dev1", CREATED, "n-1")
    other = sign(method, target, key=OTHER)
    for name, edited in mutations(headers).items():
        if name == "other key":
            edited = other
        result = both(method, target, edited)
        if name in STILL_VALID:
            assert result == ("dev1", CREATED, "n-1"), name
        else:
            assert isinstance(result, type), (name, result)
    # the request verified against another method or target
    assert isinstance(both("PATCH" if method != "PATCH" else "PUT", target, headers), type)
    assert isinstance(both(method, "/v1/other", headers), type)


@pytest.mark.parametrize("key_id", KEY_IDS)
@pytest.mark.parametrize("nonce", NONCES)
def test_key_ids_and_nonces(key_id: str, nonce: str) -> None:
    if not key_id.isascii():
        with pytest.raises(FormatError, match="cannot sign"):
            sign("POST", "/v1/device/heartbeat", key_id=key_id, nonce=nonce)
        return
    headers = sign("POST", "/v1/device/heartbeat", key_id=key_id, nonce=nonce)
    got = httpsig.canonical_base("POST", "/v1/device/heartbeat", headers)
    if got is not None:
        assert got.base == library_base("POST", "/v1/device/heartbeat", key_id, nonce)
        assert (got.key_id, got.nonce) == (key_id, nonce)
    plain = set(string.ascii_letters + string.digits)
    canonical_key = set(key_id) <= plain | set("._:-")
    canonical_nonce = set(nonce) <= plain | set("._~-") and len(nonce) <= 64
    assert (got is not None) == (canonical_key and canonical_nonce)
    expected = (key_id, CREATED, nonce) if len(nonce) <= 64 else type
    result = both("POST", "/v1/device/heartbeat", headers, key_id)
    if expected is type:
        assert isinstance(result, type)
    else:
        assert result == expected
    assert httpsig.signed_key_id(headers) == key_id


def test_the_agents_requests_take_the_canonical_path() -> None:
    """What the agent's signer (device/agent/signing.py) sends is in the canonical form:
    a device id of 32 hex digits, a token_urlsafe nonce, the routes it calls."""
    from types import SimpleNamespace

    from bastion.device.agent.signing import TpmRequestSigner
    from bastion.io.clock import FixedClock
    from bastion.server.db.base import new_id

    class SoftwareSigner(TpmRequestSigner):
        def sign_base(self, base: bytes) -> bytes:
            return _signer(KEY)(base)

    device_id = new_id()
    identity: Any = SimpleNamespace(device_id=device_id)
    signer = SoftwareSigner(None, identity, FixedClock(NOW))  # type: ignore[arg-type]
    for method, target in (
        ("GET", "/v1/device"),
        ("GET", "/v1/device/config"),
        ("POST", "/v1/device/heartbeat"),
        ("GET", "/v1/device/target-release"),
        ("GET", "/v1/device/channel"),
        ("POST", "/v1/device/logs"),
    ):
        for _ in range(20):  # nonces differ each time
            headers = dict(signer(method, target, BODY))
            got = httpsig.canonical_base(method, target, headers)
            assert got is not None, (target, headers)
            assert both(method, target, headers, device_id) == (device_id, CREATED, got.nonce)


_TARGET_CHARS = st.sampled_from([*list("az09._~-/?=&%+:@!$'()*,; é"), "%2F", "%41", "/."])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from([*METHODS, "get", "Post"]),
    tail=st.lists(_TARGET_CHARS, max_size=24).map("".join),
    key_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=70),
    nonce=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=70),
)
def test_drawn_requests_agree(method: str, tail: str, key_id: str, nonce: str) -> None:
    target = "/" + tail
    try:
        headers = sign(method, target, key_id=key_id, nonce=nonce)
    except BastionError:
        assume(False)  # the library cannot sign it: there is nothing to compare
        raise AssertionError("unreachable") from None
    got = httpsig.canonical_base(method.upper(), target, headers)
    if got is not None:
        assert got.base == library_base(method, target, key_id, nonce)
    both(method, target, headers, key_id)
    both(method, target, {**headers, "Signature": _flip(headers["Signature"])}, key_id)
