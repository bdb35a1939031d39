"""DSSE envelopes: PAE, wire form, thresholds, and the negative table."""

from __future__ import annotations

import base64
import json

import pytest

from bastion.errors import ConfigError, FormatError, LimitError, SignatureError
from bastion.limits import ENVELOPE_MAX_SIGNATURES
from bastion.trust.envelope import (
    Envelope,
    EnvelopeSignature,
    pae,
    parse_envelope,
    sign_envelope,
    verify_envelope,
    verify_envelope_result,
)
from bastion.trust.signer import SoftwareSigner, Verifier

TYPE = "application/vnd.bastion.test+json"


def test_pae_matches_dsse_spec_vector() -> None:
    # https://github.com/secure-systems-lab/dsse/blob/master/protocol.md (test vector)
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    assert pae("t\u00e9", b"x") == b"DSSEv1 3 t\xc3\xa9 1 x"


def _signers(keygen, n: int, alg: str = "ed25519") -> list[SoftwareSigner]:
    return [SoftwareSigner(keygen(alg, i)) for i in range(n)]


def _verifiers(signers: list[SoftwareSigner]) -> list[Verifier]:
    return [Verifier.of(s.public_key()) for s in signers]


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-2048"])
def test_sign_serialize_parse_verify(keygen, alg: str) -> None:
    signers = _signers(keygen, 2, alg)
    env = sign_envelope(TYPE, b'{"v":1}', signers)
    again = Envelope.parse(env.to_bytes())
    assert again == env
    assert verify_envelope(again, _verifiers(signers), payload_type=TYPE, threshold=2) == b'{"v":1}'


def test_wire_form_is_dsse(keygen) -> None:
    signer = SoftwareSigner(keygen("ed25519"))
    obj = json.loads(sign_envelope(TYPE, b"abc", [signer]).to_bytes())
    assert obj["payloadType"] == TYPE
    assert base64.b64decode(obj["payload"]) == b"abc"
    assert obj["signatures"][0]["keyid"] == signer.key_id
    Verifier.of(signer.public_key()).verify(
        pae(TYPE, b"abc"), base64.b64decode(obj["signatures"][0]["sig"])
    )


def test_urlsafe_base64_and_missing_keyid_accepted(keygen) -> None:
    signer = SoftwareSigner(keygen("ed25519"))
    sig = signer.sign(pae(TYPE, b"\xfb\xff"))
    doc = {
        "payload": base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("="),
        "payloadType": TYPE,
        "signatures": [{"sig": base64.urlsafe_b64encode(sig).decode()}],
    }
    env = parse_envelope(json.dumps(doc).encode())
    assert env.payload == b"\xfb\xff"
    assert (
        verify_envelope(env, [Verifier.of(signer.public_key())], payload_type=TYPE) == b"\xfb\xff"
    )


def _flip_b64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


NEGATIVE = [
    "wrong key",
    "threshold not met",
    "duplicate signer",
    "duplicate signer, no keyid",
    "wrong payload type",
    "flipped payload bit",
    "flipped signature bit",
    "payloadType changed in envelope",
    "signature moved to other keyid",
    "no signatures",
    "untrusted extra signers",
]


@pytest.mark.parametrize("case", NEGATIVE)
def test_verify_negative_table(keygen, case: str) -> None:
    a, b, c = _signers(keygen, 3)
    trusted = _verifiers([a, b])
    threshold = 2
    ptype = TYPE
    env = sign_envelope(TYPE, b"payload", [a, b])
    doc = env.to_json()
    if case == "wrong key":
        trusted = _verifiers([a, c])
    elif case == "threshold not met":
        env = sign_envelope(TYPE, b"payload", [a])
        doc = env.to_json()
    elif case == "duplicate signer":
        doc = sign_envelope(TYPE, b"payload", [a, a, a]).to_json()
    elif case == "duplicate signer, no keyid":
        doc = sign_envelope(TYPE, b"payload", [a, a]).to_json()
        for s in doc["signatures"]:
            del s["keyid"]
    elif case == "wrong payload type":
        ptype = "application/vnd.bastion.other"
    elif case == "flipped payload bit":
        doc["payload"] = _flip_b64(doc["payload"])
    elif case == "flipped signature bit":
        doc["signatures"][1]["sig"] = _flip_b64(doc["signatures"][1]["sig"])
    elif case == "payloadType changed in envelope":
        doc["payloadType"] = TYPE + "x"
        ptype = TYPE + "x"
    elif case == "signature moved to other keyid":
        doc["signatures"][1]["keyid"] = a.key_id
    elif case == "no signatures":
        doc["signatures"] = []
    elif case == "untrusted extra signers":
        doc = sign_envelope(TYPE, b"payload", [a, c, *_signers(keygen, 3, "ecdsa-p256")]).to_json()
    parsed = parse_envelope(json.dumps(doc).encode())
    with pytest.raises(SignatureError):
        verify_envelope(parsed, trusted, payload_type=ptype, threshold=threshold)
    result = verify_envelope_result(parsed, trusted, payload_type=ptype, threshold=threshold)
    assert not result.ok
    assert result.failures


def test_duplicates_count_once_but_distinct_keys_count(keygen) -> None:
    a, b = _signers(keygen, 2)
    env = sign_envelope(TYPE, b"p", [a, a, b])
    result = verify_envelope_result(env, _verifiers([a, b]), payload_type=TYPE, threshold=2)
    assert result.ok
    assert sorted(result.valid_keyids) == sorted([a.key_id, b.key_id])


def test_mixed_algorithms_threshold(keygen) -> None:
    signers = [
        SoftwareSigner(keygen("ed25519")),
        SoftwareSigner(keygen("ecdsa-p256")),
        SoftwareSigner(keygen("rsa-2048")),
    ]
    env = sign_envelope(TYPE, b"p", signers)
    assert verify_envelope(env, _verifiers(signers), payload_type=TYPE, threshold=3) == b"p"


@pytest.mark.parametrize("threshold", [0, -1, 3])
def test_impossible_threshold_is_config_error(keygen, threshold: int) -> None:
    a, b = _signers(keygen, 2)
    env = sign_envelope(TYPE, b"p", [a, b])
    with pytest.raises(ConfigError):
        verify_envelope(env, _verifiers([a, b]), payload_type=TYPE, threshold=threshold)


def _doc(**over: object) -> bytes:
    doc: dict[str, object] = {
        "payload": "aGk=",
        "payloadType": TYPE,
        "signatures": [{"keyid": "k", "sig": "AAAA"}],
    }
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", FormatError),
        (b"[]", FormatError),
        (b"\xff\xfe", FormatError),
        (b'{"payload":"aGk=","payload":"aGk=","payloadType":"t","signatures":[]}', FormatError),
        (_doc(extra=1), FormatError),
        (_doc(payload=5), FormatError),
        (_doc(payload="a*b="), FormatError),
        (_doc(payload="aGk=a"), FormatError),
        (_doc(payload="a+_b"), FormatError),
        (_doc(payloadType=""), FormatError),
        (_doc(payloadType=7), FormatError),
        (_doc(signatures={}), FormatError),
        (_doc(signatures=[{"keyid": "k"}]), FormatError),
        (_doc(signatures=[{"keyid": 1, "sig": "AAAA"}]), FormatError),
        (_doc(signatures=[{"keyid": "k", "sig": "AAAA", "x": 1}]), FormatError),
        (_doc(signatures=[{"sig": "AAAA"}] * (ENVELOPE_MAX_SIGNATURES + 1)), LimitError),
        (b"[" * 5000 + b"]" * 5000, FormatError),
    ],
)
def test_parser_refuses(data: bytes, error: type) -> None:
    with pytest.raises(error):
        parse_envelope(data)


def test_parser_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import bastion.trust.envelope as mod

    monkeypatch.setattr(mod, "ENVELOPE_MAX_SIZE", 100)
    with pytest.raises(LimitError):
        parse_envelope(_doc(payload="A" * 200))


def test_add_signature_limit() -> None:
    env = Envelope(
        TYPE, b"", tuple(EnvelopeSignature("k", b"s") for _ in range(ENVELOPE_MAX_SIGNATURES))
    )

    class _S:
        key_id = "x"

        def sign(self, data: bytes) -> bytes:
            return b"sig"

    with pytest.raises(LimitError):
        env.add_signature(_S())  # type: ignore[arg-type]
