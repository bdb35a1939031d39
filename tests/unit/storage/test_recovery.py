"""Recovery keys: systemd's alphabet and layout, typed-input tolerance, enrolment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bastion.errors import AuthError, FormatError
from bastion.formats.luks2 import KdfType, Pbkdf2Params
from bastion.storage.luks2_volume import FileRange, KdfSpec, Luks2Volume
from bastion.storage.recovery import (
    decode_recovery_key,
    encode_recovery_key,
    enroll_recovery_key,
    generate_recovery_key,
    normalize_recovery_key,
    unlock_recovery_key,
)

MiB = 1 << 20


def test_layout_and_alphabet() -> None:
    key = generate_recovery_key()
    assert re.fullmatch(r"([cbdefghijklnrtuv]{8}-){7}[cbdefghijklnrtuv]{8}", key)
    assert generate_recovery_key() != key
    assert encode_recovery_key(decode_recovery_key(key)) == key


def test_known_encoding() -> None:
    # modhex: nibble 0 -> c, 1 -> b, ..., f -> v; high nibble first
    raw = bytes([0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF] * 4)
    assert encode_recovery_key(raw).split("-")[0] == "cbdefghi"
    assert encode_recovery_key(raw).split("-")[1] == "jklnrtuv"


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "characters"),
        ("c" * 63, "characters"),
        ("c" * 63 + "a", "contains 'a'"),
        ("c" * 65, "characters"),
    ],
)
def test_bad_keys(typed: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        normalize_recovery_key(typed)


def test_typed_variants_normalize() -> None:
    key = generate_recovery_key()
    assert normalize_recovery_key(key.upper()) == key
    assert normalize_recovery_key(key.replace("-", " ")) == key
    assert normalize_recovery_key(key.replace("-", "")) == key
    with pytest.raises(FormatError):
        encode_recovery_key(b"short")


def test_enroll_and_unlock(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(3 * MiB)
    vol = Luks2Volume.format(
        FileRange(img), b"pw", kdf=KdfSpec(KdfType.PBKDF2, iterations=1000), data_offset=2 * MiB
    )
    enrolled = enroll_recovery_key(vol)
    again = Luks2Volume.open(FileRange(img))
    ks = again.metadata.keyslots[enrolled.keyslot]
    assert isinstance(ks.kdf, Pbkdf2Params)
    assert (ks.kdf.hash, ks.kdf.iterations) == ("sha512", 1000)
    tok = again.tokens[enrolled.token].to_json()
    assert tok == {"type": "systemd-recovery", "keyslots": [str(enrolled.keyslot)]}
    assert unlock_recovery_key(again, enrolled.key.upper().replace("-", " ")) == enrolled.keyslot
    assert again.volume_key == vol.volume_key
    wrong = generate_recovery_key()
    with pytest.raises(AuthError):
        unlock_recovery_key(Luks2Volume.open(FileRange(img)), wrong)
