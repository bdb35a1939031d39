"""PCR 11 prediction (systemd-stub 252 order) and the .pcrsig JSON."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.unit.trust.conftest import make_key

from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    LimitError,
    SignatureError,
)
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.tpm.pcr import policy_pcr
from bastion.trust.pcr11 import (
    DEFAULT_PHASES,
    measurements,
    pcrsig_json,
    predict_pcr11,
    public_key_fingerprint,
    sign_pcr11,
    verify_pcrsig,
)
from bastion.trust.signer import SignatureScheme, SoftwareSigner

SECTIONS = {
    ".cmdline": b"quiet\0",
    ".linux": b"MZkernel",
    ".pcrsig": b"{}",
    ".uname": b"6.1.0",
    ".osrel": b"ID=x\n",
    ".initrd": b"",
}


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_prediction_by_hand() -> None:
    value = bytes(32)
    for name in (".linux", ".osrel", ".cmdline"):  # stub order; empty .initrd skipped
        value = _h(value + _h(name.encode() + b"\0"))
        value = _h(value + _h(SECTIONS[name]))
    assert predict_pcr11(SECTIONS) == value
    for word in ("enter-initrd", "leave-initrd"):
        value = _h(value + _h(word.encode()))
    assert predict_pcr11(SECTIONS, "enter-initrd:leave-initrd") == value
    assert predict_pcr11(SECTIONS, ":") == predict_pcr11(SECTIONS, "")


def test_pcrsig_and_unknown_sections_are_not_measured() -> None:
    assert len(measurements(SECTIONS)) == 6
    without = {k: v for k, v in SECTIONS.items() if k not in (".pcrsig", ".uname")}
    assert predict_pcr11(without) == predict_pcr11(SECTIONS)


@pytest.mark.parametrize("name", [".linux", ".osrel", ".cmdline"])
def test_every_measured_byte_matters(name: str) -> None:
    changed = dict(SECTIONS, **{name: SECTIONS[name] + b"!"})
    assert predict_pcr11(changed) != predict_pcr11(SECTIONS)


def test_sha384_bank() -> None:
    assert len(predict_pcr11(SECTIONS, bank=HashAlg.SHA384)) == 48


def test_signed_policy() -> None:
    key = make_key("rsa-2048", 0)
    assert isinstance(key, rsa.RSAPrivateKey)
    signer = SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256)
    sigs = sign_pcr11(SECTIONS, signer)
    doc = json.loads(pcrsig_json(sigs))
    assert list(doc) == ["sha256"] and len(doc["sha256"]) == len(DEFAULT_PHASES)
    pkcs1 = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    for entry, phase in zip(doc["sha256"], DEFAULT_PHASES, strict=True):
        assert entry["pcrs"] == [11]
        assert entry["pkfp"] == hashlib.sha256(pkcs1).hexdigest()
        pol = bytes.fromhex(entry["pol"])
        assert pol == policy_pcr(
            PcrSelection(HashAlg.SHA256, (11,)), {11: predict_pcr11(SECTIONS, phase)}
        )
        key.public_key().verify(
            base64.b64decode(entry["sig"]), pol, padding.PKCS1v15(), hashes.SHA256()
        )
    assert public_key_fingerprint(key.public_key()) == doc["sha256"][0]["pkfp"]


REFUSED = {
    "ecdsa key": SoftwareSigner(make_key("ecdsa-p256", 0)),
    "rsa with pss": SoftwareSigner(make_key("rsa-2048", 0), SignatureScheme.RSA_PSS_SHA256),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_signers(case: str) -> None:
    with pytest.raises(ConfigError):
        sign_pcr11(SECTIONS, REFUSED[case])


def test_no_phases_refused() -> None:
    signer = SoftwareSigner(make_key("rsa-2048", 0), SignatureScheme.RSA_PKCS1V15_SHA256)
    with pytest.raises(ConfigError):
        sign_pcr11(SECTIONS, signer, phases=())


_KEY = make_key("rsa-2048", 0)
assert isinstance(_KEY, rsa.RSAPrivateKey)
_SIGNER = SoftwareSigner(_KEY, SignatureScheme.RSA_PKCS1V15_SHA256)
_GOOD = dict(SECTIONS, **{".pcrsig": pcrsig_json(sign_pcr11(SECTIONS, _SIGNER))})


def test_verify_pcrsig_accepts_and_names_phases() -> None:
    assert verify_pcrsig(_GOOD, _KEY.public_key()) == list(DEFAULT_PHASES)
    only = dict(SECTIONS, **{".pcrsig": pcrsig_json(sign_pcr11(SECTIONS, _SIGNER, [""]))})
    assert verify_pcrsig(only, _KEY.public_key(), [""]) == [""]


def _edit(change: Callable[[dict[str, Any]], None]) -> dict[str, bytes]:
    doc = json.loads(_GOOD[".pcrsig"])
    change(doc)
    return dict(_GOOD, **{".pcrsig": json.dumps(doc).encode()})


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["sha256"][0].__setitem__(key, value)


_OTHER = make_key("rsa-2048", 1)
assert isinstance(_OTHER, rsa.RSAPrivateKey)
_FLIPPED_SIG = base64.b64encode(
    bytes([base64.b64decode(json.loads(_GOOD[".pcrsig"])["sha256"][0]["sig"])[0] ^ 1])
    + base64.b64decode(json.loads(_GOOD[".pcrsig"])["sha256"][0]["sig"])[1:]
).decode()

PCRSIG_NEGATIVE: dict[str, tuple[dict[str, bytes], rsa.RSAPublicKey, type[Exception]]] = {
    "no .pcrsig": (
        {k: v for k, v in SECTIONS.items() if k != ".pcrsig"},
        _KEY.public_key(),
        SignatureError,
    ),
    "other trusted key": (_GOOD, _OTHER.public_key(), SignatureError),
    "flipped signature": (_edit(_set("sig", _FLIPPED_SIG)), _KEY.public_key(), SignatureError),
    "policy of other sections": (
        dict(_GOOD, **{".cmdline": b"init=/bin/sh\0"}),
        _KEY.public_key(),
        DigestMismatchError,
    ),
    "phase not accepted": (
        dict(SECTIONS, **{".pcrsig": pcrsig_json(sign_pcr11(SECTIONS, _SIGNER, ["sysinit"]))}),
        _KEY.public_key(),
        DigestMismatchError,
    ),
    "other pcr": (_edit(_set("pcrs", [7])), _KEY.public_key(), FormatError),
    "bad base64": (_edit(_set("sig", "!!!")), _KEY.public_key(), FormatError),
    "missing field": (_edit(lambda d: d["sha256"][0].pop("pol")), _KEY.public_key(), FormatError),
    "other bank": (_edit(lambda d: d.__setitem__("sha1", [])), _KEY.public_key(), FormatError),
    "not json": (dict(SECTIONS, **{".pcrsig": b"{"}), _KEY.public_key(), FormatError),
    "duplicate key": (
        dict(SECTIONS, **{".pcrsig": b'{"sha256":[],"sha256":[]}'}),
        _KEY.public_key(),
        FormatError,
    ),
    "oversize": (dict(SECTIONS, **{".pcrsig": b" " * 70000}), _KEY.public_key(), LimitError),
}


@pytest.mark.parametrize("case", sorted(PCRSIG_NEGATIVE))
def test_verify_pcrsig_negative(case: str) -> None:
    sections, key, error = PCRSIG_NEGATIVE[case]
    with pytest.raises(error):
        verify_pcrsig(sections, key)
