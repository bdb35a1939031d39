"""formats/enrollment: key derivation, finish proof, sealed API key, negative table."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bastion.errors import AuthError, FormatError, LimitError
from bastion.formats import enrollment as en

SECRET = bytes(range(32))
CID = "ch_0123456789abcdef"


def test_derive_keys_is_hkdf_sha256_with_labels() -> None:
    keys = en.derive_keys(SECRET, CID)
    expect = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=CID.encode(), info=b"bastion-enroll-proof-v1"
    ).derive(SECRET)
    assert keys.proof == expect
    assert keys.wrap != keys.proof and len(keys.wrap) == 32


def test_proof_is_hmac_over_label_and_id() -> None:
    keys = en.derive_keys(SECRET, CID)
    expect = hmac.new(keys.proof, b"bastion-enroll-finish-v1\x00" + CID.encode(), "sha256")
    assert en.finish_proof(keys, CID) == expect.digest()
    en.check_finish_proof(keys, CID, expect.digest())


def test_certify_qualifying_data_binds_csr() -> None:
    assert (
        en.certify_qualifying_data(b"csr")
        == hashlib.sha256(b"bastion-enroll-certify-v1\x00csr").digest()
    )
    assert en.certify_qualifying_data(b"csr") != en.certify_qualifying_data(b"csr2")


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]


@pytest.mark.parametrize(
    ("case", "proof_of"),
    [
        ("other secret", lambda: en.finish_proof(en.derive_keys(b"\x01" * 32, CID), CID)),
        ("other challenge", lambda: en.finish_proof(en.derive_keys(SECRET, "ch_x"), "ch_x")),
        ("flipped bit", lambda: _flip(en.finish_proof(en.derive_keys(SECRET, CID), CID), 5)),
        ("truncated", lambda: en.finish_proof(en.derive_keys(SECRET, CID), CID)[:16]),
        ("empty", lambda: b""),
    ],
)
def test_wrong_proof_refused(case: str, proof_of: object) -> None:
    keys = en.derive_keys(SECRET, CID)
    with pytest.raises(AuthError):
        en.check_finish_proof(keys, CID, proof_of())  # type: ignore[operator]


def test_seal_round_trip() -> None:
    keys = en.derive_keys(SECRET, CID)
    blob = en.seal_api_key(keys, "dev-1", "bst_dev_abc")
    assert en.open_api_key(keys, "dev-1", blob) == "bst_dev_abc"
    assert blob[0] == 1 and len(blob) == 1 + 12 + len("bst_dev_abc") + 16


@pytest.mark.parametrize(
    ("case", "mutate", "device", "secret", "error"),
    [
        ("other TPM secret", lambda b: b, "dev-1", b"\x02" * 32, AuthError),
        ("other device id", lambda b: b, "dev-2", SECRET, AuthError),
        ("flipped ciphertext bit", lambda b: _flip(b, 14), "dev-1", SECRET, AuthError),
        ("flipped tag bit", lambda b: _flip(b, len(b) - 1), "dev-1", SECRET, AuthError),
        ("truncated", lambda b: b[:20], "dev-1", SECRET, FormatError),
        ("bad version", lambda b: b"\x02" + b[1:], "dev-1", SECRET, FormatError),
        ("oversize", lambda b: b + b"\x00" * 300, "dev-1", SECRET, LimitError),
    ],
)
def test_sealed_key_negative(case, mutate, device, secret, error) -> None:  # type: ignore[no-untyped-def]
    blob = en.seal_api_key(en.derive_keys(SECRET, CID), "dev-1", "bst_dev_abc")
    with pytest.raises(error):
        en.open_api_key(en.derive_keys(secret, CID), device, mutate(blob))


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_secret_size_enforced(size: int) -> None:
    with pytest.raises(FormatError):
        en.derive_keys(b"\x00" * size, CID)
