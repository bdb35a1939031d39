"""``trust/delegation.py``: the negative table of the platform root's delegation check."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bastion.errors import FormatError, LimitError, SignatureError
from bastion.limits import BOOT_STATEMENT_MAX_SIZE
from bastion.trust import delegation as dl
from bastion.trust.envelope import Envelope, sign_envelope
from bastion.trust.signer import SoftwareSigner, Verifier

ROOT = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
OTHER_ROOT = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
BOOT = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
TRUSTED = Verifier.of(ROOT.public_key())


def _signed(doc: dict[str, object], signer: SoftwareSigner = ROOT) -> bytes:
    payload = json.dumps(doc).encode()
    return sign_envelope(dl.PAYLOAD_TYPE, payload, [signer]).to_bytes()


def _good_doc() -> dict[str, object]:
    doc: dict[str, object] = json.loads(dl.delegation_statement("profile", BOOT.public_key()))
    return doc


def _flip(data: bytes) -> bytes:
    env = Envelope.parse(data)
    payload = bytearray(env.payload)
    payload[10] ^= 1
    return Envelope(env.payload_type, bytes(payload), env.signatures).to_bytes()


def test_good_delegation_names_the_boot_key() -> None:
    got = dl.verify_delegation(
        dl.sign_delegation(ROOT, "profile", BOOT.public_key()), TRUSTED, "profile", what="d"
    )
    assert got.key_id == BOOT.key_id


CASES: list[tuple[str, Callable[[], bytes], type[Exception], str]] = [
    ("another root signed it",
     lambda: dl.sign_delegation(OTHER_ROOT, "profile", BOOT.public_key()),
     SignatureError, "not signed by the platform root"),
    ("the delegated key signed itself",
     lambda: dl.sign_delegation(BOOT, "profile", BOOT.public_key()),
     SignatureError, "not signed by the platform root"),
    ("one flipped payload bit",
     lambda: _flip(dl.sign_delegation(ROOT, "profile", BOOT.public_key())),
     SignatureError, "not signed"),
    ("another payload type",
     lambda: sign_envelope("application/json", dl.delegation_statement(
         "profile", BOOT.public_key()), [ROOT]).to_bytes(),
     SignatureError, "not signed"),
    ("another role", lambda: _signed({**_good_doc(), "role": "boot"}),
     SignatureError, "delegates role 'boot'"),
    ("not a delegation", lambda: _signed({**_good_doc(), "type": "bootloader"}),
     FormatError, "not a delegation"),
    ("no key", lambda: _signed({k: v for k, v in _good_doc().items() if k != "key"}),
     FormatError, "names no key"),
    ("key id of another key",
     lambda: _signed({**_good_doc(), "key_id": "00" * 32}), FormatError, "key id"),
    ("key is not a key", lambda: _signed({**_good_doc(), "key": "-----BEGIN nonsense"}),
     FormatError, "not a public key"),
    ("payload not JSON",
     lambda: sign_envelope(dl.PAYLOAD_TYPE, b"{not json", [ROOT]).to_bytes(),
     FormatError, "not JSON"),
    ("not an envelope", lambda: b"garbage", FormatError, "d:"),
    ("empty", lambda: b"", FormatError, "d:"),
    ("oversized", lambda: b" " * (BOOT_STATEMENT_MAX_SIZE + 1), LimitError, "exceeds"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "make", "error", "words"), CASES, ids=[c[0] for c in CASES])
def test_negative_table(
    case: str, make: Callable[[], bytes], error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as exc:
        dl.verify_delegation(make(), TRUSTED, "profile", what="d")
    assert words in str(exc.value)


def test_unknown_role_cannot_be_signed() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(FormatError, match="delegation role"):
        dl.sign_delegation(ROOT, "everything", key)
