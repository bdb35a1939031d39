"""Signed-policy ``systemd-tpm2`` tokens on the software TPM: the key, the .pcrsig choice,
enrol and unlock, and their negative tables (the swtpm/systemd side is in
tests/interop/test_signed_policy_systemd.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.unit.trust.conftest import make_key

from bastion.errors import ConfigError, FormatError, LimitError, PolicyError, SignatureError
from bastion.formats.luks2 import KdfType, Token
from bastion.storage import signed_policy
from bastion.storage.luks2_volume import FileRange, KdfSpec, Luks2Volume
from bastion.storage.sealed import Tpm2Token, enroll_tpm_signed, reseal, unlock_with_token
from bastion.tpm import external
from bastion.tpm import pcr as pcrmath
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.tpm.software import SoftwareTpm
from bastion.trust.pcr11 import PcrSignature, pcr11_policy, pcrsig_json, public_key_fingerprint
from bastion.trust.signer import SignatureScheme, SoftwareSigner

VECTOR = Path(__file__).resolve().parents[2] / "vectors" / "tpm" / "systemd252-signed-token.json"
PCR11 = PcrSelection(HashAlg.SHA256, (11,))


def pem(n: int) -> bytes:
    return (
        make_key("rsa-2048", n)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def pcrsig(n: int, *values: bytes) -> bytes:
    signer = SoftwareSigner(make_key("rsa-2048", n), SignatureScheme.RSA_PKCS1V15_SHA256)
    fp = public_key_fingerprint(signer.public_key())  # type: ignore[arg-type]
    entries = [
        PcrSignature("", v, pcr11_policy(v), fp, signer.sign(pcr11_policy(v))) for v in values
    ]
    return pcrsig_json(entries)


def test_systemd_252_policy_hash_vector() -> None:
    """systemd 252 writes the RSA exponent out; the TPM's 0 shorthand names another key."""
    raw = json.loads(VECTOR.read_text())
    token = Tpm2Token.from_token(Token.from_json(raw, "vector"))
    assert (token.pcrs, token.pubkey_pcrs) == ((), (11,))
    key = signed_policy.load_public_key(token.pubkey)
    assert pcrmath.authorized_sealing_policy(signed_policy.key_name(key)) == token.policy_hash
    later = external.rsa_public(key, explicit_exponent=False).name
    assert pcrmath.authorized_sealing_policy(later) != token.policy_hash
    assert token.to_token().to_json() == raw


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"garbage", FormatError),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", FormatError),
        (
            make_key("rsa-2048", 3)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
            FormatError,
        ),
        (
            make_key("ecdsa-p256", 1)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            ConfigError,
        ),
        (b"-----BEGIN PUBLIC KEY-----" + b"A" * 20000, LimitError),
    ],
    ids=["garbage", "bad-body", "pkcs1-not-spki", "ecc", "oversize"],
)
def test_load_public_key_refuses(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        signed_policy.load_public_key(data)


def test_find_signature_picks_the_current_value() -> None:
    key = signed_policy.load_public_key(pem(3))
    a, b = b"\x0a" * 32, b"\x0b" * 32
    sig = pcrsig(3, a, b)
    approved, raw = signed_policy.find_signature(sig, key, PCR11, {11: b})
    assert approved == pcr11_policy(b)
    assert raw == base64.b64decode(json.loads(sig)["sha256"][1]["sig"])


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("stale", PolicyError, "PCR 11 = " + "0c" * 32),
        ("other-key", SignatureError, "no signature by the token's key"),
        ("other-pcrs", PolicyError, "PCR 11 = "),
        ("bad-base64", FormatError, "not base64"),
        ("sha1-bank", ConfigError, "sha256 bank"),
        ("not-json", FormatError, "not JSON"),
    ],
)
def test_find_signature_negative(case: str, error: type[Exception], message: str) -> None:
    key = signed_policy.load_public_key(pem(3))
    sel, value = PCR11, b"\x0c" * 32
    sig = pcrsig(3, b"\x0a" * 32)
    if case == "other-key":
        sig = pcrsig(4, value)
    elif case == "other-pcrs":
        doc = json.loads(pcrsig(3, value))
        doc["sha256"][0]["pcrs"] = [7, 11]
        sig = json.dumps(doc).encode()
    elif case == "bad-base64":
        doc = json.loads(pcrsig(3, value))
        doc["sha256"][0]["sig"] = "***"
        sig = json.dumps(doc).encode()
    elif case == "sha1-bank":
        sel = PcrSelection(HashAlg.SHA1, (11,))
        value = b"\x0c" * 20
    elif case == "not-json":
        sig = b"{"
    with pytest.raises(error, match=message.replace(".", r"\.")):
        signed_policy.find_signature(sig, key, sel, {11: value})


@pytest.fixture
def img(tmp_path: Path) -> Path:
    path = tmp_path / "v.img"
    with open(path, "wb") as f:
        f.truncate(3 << 20)
    Luks2Volume.format(
        FileRange(path), b"pw", kdf=KdfSpec(KdfType.PBKDF2, iterations=1000), data_offset=2 << 20
    )
    return path


def opened(img: Path) -> Luks2Volume:
    vol = Luks2Volume.open(FileRange(img))
    vol.unlock_passphrase(b"pw")
    return vol


def test_enroll_and_unlock_on_software_tpm(img: Path, tmp_path: Path) -> None:
    volume = opened(img)
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    tpm.pcr_extend(11, {HashAlg.SHA256: hashlib.sha256(b".linux").digest()})
    now = tpm.pcr_read(PCR11)[11]
    res = enroll_tpm_signed(volume, tpm, pem(3), pcr_signature=pcrsig(3, now))
    assert (res.pubkey_pcrs, res.pcrs) == ((11,), (7,))
    vk = volume.volume_key
    reopened = Luks2Volume.open(FileRange(img))
    assert unlock_with_token(reopened, tpm, pcr_signature=pcrsig(3, now)) == res.keyslot
    assert reopened.volume_key == vk
    # an update: the new image's PCR 11 is signed, nothing is resealed
    tpm.pcr_extend(11, {HashAlg.SHA256: hashlib.sha256(b"update").digest()})
    new = tpm.pcr_read(PCR11)[11]
    again = Luks2Volume.open(FileRange(img))
    assert unlock_with_token(again, tpm, pcr_signature=pcrsig(3, now, new)) == res.keyslot
    with pytest.raises(PolicyError, match="PCR 11 = " + new.hex()):
        unlock_with_token(Luks2Volume.open(FileRange(img)), tpm, pcr_signature=pcrsig(3, now))
    with pytest.raises(ConfigError, match="signed policy"):
        reseal(opened(img), tpm, res.token, pcr_values={7: bytes(32)})


def test_enroll_with_stale_signature_writes_nothing(img: Path, tmp_path: Path) -> None:
    volume = opened(img)
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    before = (dict(volume.tokens), set(volume.metadata.keyslots))
    with pytest.raises(PolicyError):
        enroll_tpm_signed(volume, tpm, pem(3), pcr_signature=pcrsig(3, b"\x01" * 32))
    assert (dict(volume.tokens), set(volume.metadata.keyslots)) == before


def test_token_round_trip_keeps_a_pubkey_without_pcrs() -> None:
    raw = json.loads(VECTOR.read_text())
    raw = {k: v for k, v in raw.items() if k != "tpm2_pubkey_pcrs"} | {"tpm2-pcrs": [7]}
    token = Tpm2Token.from_token(Token.from_json(raw, "foreign"))
    assert (token.pubkey_pcrs, token.signed_selection) == ((), None)
    assert token.to_token().to_json() == raw
