"""TPM-sealed keyslots: enroll, unlock by token, lock, re-seal; both TPM backends."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import (
    AuthError,
    BastionError,
    ConfigError,
    FormatError,
    NotFoundError,
    PolicyError,
)
from bastion.formats.luks2 import KdfType, Pbkdf2Params, Token
from bastion.storage.luks2_volume import FileRange, KdfSpec, Luks2Volume
from bastion.storage.sealed import (
    TOKEN_TYPE,
    Tpm2Token,
    enroll_tpm,
    lock,
    lock_volume,
    parse_pcr_list,
    remove_tpm_enrollment,
    reseal,
    split_blob,
    unlock_with_token,
)
from bastion.tpm import pcr as pcrmath
from bastion.tpm.base import HashAlg, PcrSelection

MiB = 1 << 20


def volume(tmp_path: Path) -> tuple[Path, Luks2Volume]:
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(3 * MiB)
    vol = Luks2Volume.format(
        FileRange(img), b"pw", kdf=KdfSpec(KdfType.PBKDF2, iterations=1000), data_offset=2 * MiB
    )
    return img, vol


def reopen(img: Path) -> Luks2Volume:
    return Luks2Volume.open(FileRange(img))


def test_enroll_writes_a_systemd_token(tmp_path: Path, tpm_backend: Any) -> None:
    img, vol = volume(tmp_path)
    tpm_backend.pcr_extend(7, {HashAlg.SHA256: hashlib.sha256(b"secure boot").digest()})
    res = enroll_tpm(vol, tpm_backend)
    again = reopen(img)
    tok = again.tokens[res.token].to_json()
    assert tok["type"] == "systemd-tpm2"
    assert tok["keyslots"] == [str(res.keyslot)]
    assert tok["tpm2-pcrs"] == [7, 15]
    assert tok["tpm2-pcr-bank"] == "sha256"
    assert tok["tpm2-primary-alg"] == "ecc"
    assert tok["tpm2-pin"] is False
    values = tpm_backend.pcr_read(PcrSelection(HashAlg.SHA256, (7, 15)))
    assert (
        tok["tpm2-policy-hash"]
        == pcrmath.sealing_policy(PcrSelection(HashAlg.SHA256, (7, 15)), values).hex()
    )
    sealed = split_blob(base64.b64decode(tok["tpm2-blob"]))
    assert sealed.blob == res.blob
    ks = again.metadata.keyslots[res.keyslot]
    assert isinstance(ks.kdf, Pbkdf2Params) and (ks.kdf.hash, ks.kdf.iterations) == ("sha512", 1000)
    assert unlock_with_token(again, tpm_backend) == res.keyslot
    assert again.volume_key == vol.volume_key


def test_lock_then_unlock_fails_until_reboot(tmp_path: Path, tpm_rig: Any) -> None:
    img, vol = volume(tmp_path)
    enroll_tpm(vol, tpm_rig.tpm)
    first = reopen(img)
    unlock_with_token(first, tpm_rig.tpm)
    lock(tpm_rig.tpm, volume_uuid=first.uuid)
    with pytest.raises(PolicyError, match="PCRs 7\\+15 changed"):
        unlock_with_token(reopen(img), tpm_rig.tpm)
    tpm = tpm_rig.power_cycle()
    assert unlock_with_token(reopen(img), tpm) >= 1


def test_lock_volume_covers_the_token_bank(tmp_path: Path, tpm_rig: Any) -> None:
    img, vol = volume(tmp_path)
    enroll_tpm(vol, tpm_rig.tpm, bank=HashAlg.SHA1)
    unlock_with_token(reopen(img), tpm_rig.tpm)
    lock(tpm_rig.tpm, volume_uuid=vol.uuid)  # sha256 only: the sha1 token still opens
    unlock_with_token(reopen(img), tpm_rig.tpm)
    assert lock_volume(reopen(img), tpm_rig.tpm) == (HashAlg.SHA1, HashAlg.SHA256)
    with pytest.raises(PolicyError):
        unlock_with_token(reopen(img), tpm_rig.tpm)
    assert unlock_with_token(reopen(img), tpm_rig.power_cycle()) >= 1


def test_future_values_and_reseal(tmp_path: Path, tpm_backend: Any) -> None:
    img, vol = volume(tmp_path)
    sel = PcrSelection(HashAlg.SHA256, (7, 15))
    now = tpm_backend.pcr_read(sel)
    update = hashlib.sha256(b"new boot chain").digest()
    future = {7: pcrmath.extend(now[7], update), 15: now[15]}
    res = enroll_tpm(vol, tpm_backend)
    new = reseal(vol, tpm_backend, res.token, pcr_values=future)
    assert set(reopen(img).tokens) == {new.token}
    assert res.keyslot not in reopen(img).metadata.keyslots
    with pytest.raises(PolicyError):
        unlock_with_token(reopen(img), tpm_backend)
    tpm_backend.pcr_extend(7, {HashAlg.SHA256: update})
    assert unlock_with_token(reopen(img), tpm_backend) == new.keyslot
    remove_tpm_enrollment(vol, new.token)
    with pytest.raises(NotFoundError):
        unlock_with_token(reopen(img), tpm_backend)


def test_locked_volume_cannot_enroll(tmp_path: Path, tpm_backend: Any) -> None:
    img, _ = volume(tmp_path)
    with pytest.raises(AuthError):
        enroll_tpm(reopen(img), tpm_backend)


def _tamper(field: str, value: Callable[[Any], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(tok: dict[str, Any]) -> None:
        tok[field] = value(tok[field])

    return apply


def _flip_blob(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[40] ^= 1
    return base64.b64encode(bytes(raw)).decode()


TAMPER: list[tuple[str, Callable[[dict[str, Any]], None], type[BastionError]]] = [
    ("blob bit", _tamper("tpm2-blob", _flip_blob), BastionError),
    (
        "blob truncated",
        _tamper("tpm2-blob", lambda b: base64.b64encode(base64.b64decode(b)[:-3]).decode()),
        FormatError,
    ),
    ("blob not base64", _tamper("tpm2-blob", lambda b: "!" + b), FormatError),
    ("policy hash", _tamper("tpm2-policy-hash", lambda h: "00" * 32), PolicyError),
    ("pcr list", _tamper("tpm2-pcrs", lambda p: [7]), PolicyError),
    ("empty pcr list", _tamper("tpm2-pcrs", lambda p: []), ConfigError),
    ("bank", _tamper("tpm2-pcr-bank", lambda b: "md5"), FormatError),
    ("pin", _tamper("tpm2-pin", lambda p: True), ConfigError),
    ("primary rsa", _tamper("tpm2-primary-alg", lambda p: "rsa"), ConfigError),
    ("keyslot", _tamper("keyslots", lambda k: ["0"]), AuthError),
]


@pytest.mark.parametrize(("mutate", "error"), [pytest.param(m, e, id=n) for n, m, e in TAMPER])
def test_tampered_token(
    tmp_path: Path,
    tpm_backend: Any,
    mutate: Callable[[dict[str, Any]], None],
    error: type[BastionError],
) -> None:
    img, vol = volume(tmp_path)
    res = enroll_tpm(vol, tpm_backend)
    tok = vol.tokens[res.token].to_json()
    mutate(tok)
    vol.replace_token(res.token, Token.from_json(tok, "t"))
    with pytest.raises(error):
        unlock_with_token(reopen(img), tpm_backend)


def test_other_tpm_cannot_unseal(tmp_path: Path, tpm_backend: Any) -> None:
    from bastion.tpm.software import SoftwareTpm

    img, vol = volume(tmp_path)
    enroll_tpm(vol, tpm_backend)
    other = SoftwareTpm(tmp_path / "other.state")
    with pytest.raises(BastionError):
        unlock_with_token(reopen(img), other)


def test_parse_helpers() -> None:
    assert parse_pcr_list("7+15") == (7, 15)
    assert parse_pcr_list("15,7,7") == (7, 15)
    for bad in ("", "24", "a+b", "+"):
        with pytest.raises(ConfigError):
            parse_pcr_list(bad)
    with pytest.raises(FormatError):
        split_blob(b"\x00\x05abc")
    with pytest.raises(FormatError):
        split_blob(b"\x00\x01a\x00\x01b\x00")
    with pytest.raises(FormatError):
        Tpm2Token.from_token(Token("other", (0,), {}))
    with pytest.raises(ConfigError, match="tpm2_pcrlock"):
        Tpm2Token.from_token(
            Token(TOKEN_TYPE, (0,), {"tpm2-blob": "", "tpm2-pcrs": [7], "tpm2_pcrlock": True})
        )
    with pytest.raises(FormatError, match="tpm2_pubkey"):  # systemd refuses this too
        Tpm2Token.from_token(
            Token(TOKEN_TYPE, (0,), {"tpm2-blob": "", "tpm2-pcrs": [], "tpm2_pubkey_pcrs": [11]})
        )
    tok = Token.from_json(
        json.loads(
            '{"type":"systemd-tpm2","keyslots":["1"],"tpm2-blob":"AAFhAAFi","tpm2-pcrs":[7],'
            '"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"ab",'
            '"tpm2-pin":false,"x-future":1}'
        ),
        "t",
    )
    parsed = Tpm2Token.from_token(tok)
    assert parsed.to_token() == tok
    assert parsed.sealed.private == b"\x00\x01a"
