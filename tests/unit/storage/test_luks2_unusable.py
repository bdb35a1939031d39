"""What bastion cannot run makes one keyslot (or the data path) unusable, not the header.

cryptsetup reads a header whose keyslot uses a KDF it does not know (its own test header
says ``argon2``), another cipher or hash, and simply cannot open that keyslot; bastion
does the same and names the feature. Argon2 parameters the library rejects are a
FormatError, never argon2-cffi's own exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bastion.cli.main import main
from bastion.errors import AuthError, FormatError
from bastion.formats import luks2_keyslot as ksc
from bastion.formats.luks2 import (
    Argon2Params,
    HeaderCopy,
    KdfType,
    UnknownKdf,
    build_copy,
    metadata_from_json,
)
from bastion.storage.luks2_volume import FileRange, KdfSpec, Luks2Volume, read_header

MiB = 1 << 20
CHEAP = KdfSpec(KdfType.PBKDF2, iterations=1000)
Doc = dict[str, Any]


def _volume(tmp_path: Path, label: str = "") -> Path:
    img = tmp_path / "v.img"
    with img.open("wb") as f:
        f.truncate(4 * MiB)
    with FileRange(img) as storage:
        vol = Luks2Volume.format(
            storage, b"pw0", kdf=CHEAP, sector_size=512, data_offset=2 * MiB, label=label
        )
        vol.add_keyslot(b"pw1", kdf=CHEAP)
    return img


def _rewrite(img: Path, edit: Callable[[Doc], None]) -> None:
    """Edit the JSON of both copies, as another tool would have written it."""
    with FileRange(img) as storage:
        winner = read_header(storage).winner
        doc = winner.metadata.to_json()
        edit(doc)
        metadata = metadata_from_json(doc)
        for copy_, offset in ((HeaderCopy.PRIMARY, 0), (HeaderCopy.SECONDARY, 16384)):
            binary = replace(winner.binary, copy=copy_, hdr_offset=offset, seqid=9)
            _, area, last = build_copy(binary, metadata)
            storage.write(offset, last + area)


def _kdf_type(name: str) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        doc["keyslots"]["0"]["kdf"]["type"] = name

    return edit


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


_SALT = "A" * 43 + "="
_ARGON_LOW_MEMORY = {"type": "argon2id", "time": 4, "memory": 8, "cpus": 4, "salt": _SALT}
_ARGON_MANY_LANES = {"type": "argon2id", "time": 4, "memory": 64, "cpus": 64, "salt": _SALT}
_INTEGRITY = {"type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}

UNUSABLE = [
    ("kdf argon2 (cryptsetup's test header)", _kdf_type("argon2"), "KDF 'argon2'"),
    ("kdf scrypt", _kdf_type("scrypt"), "KDF 'scrypt'"),
    (
        "argon2id memory below 8 KiB per lane",
        _set("keyslots.0.kdf", _ARGON_LOW_MEMORY),
        "memory",
    ),
    (
        "argon2id lanes above the limit",
        _set("keyslots.0.kdf", _ARGON_MANY_LANES),
        "cpus",
    ),
    ("pbkdf2 hash", _set("keyslots.0.kdf.hash", "whirlpool"), "whirlpool"),
    ("kdf salt length", _set("keyslots.0.kdf.salt", "AAAA"), "salt"),
    ("area cipher", _set("keyslots.0.area.encryption", "twofish-xts-plain64"), "twofish"),
    ("area key size", _set("keyslots.0.area.key_size", 48), "area key size"),
    ("af hash", _set("keyslots.0.af.hash", "whirlpool"), "AF hash"),
    ("af stripes", _set("keyslots.0.af.stripes", 2000), "stripes"),
    ("keyslot type", _set("keyslots.0.type", "future"), "keyslot type 'future'"),
]


@pytest.mark.parametrize(
    ("edit", "reason"), [(e, r) for _, e, r in UNUSABLE], ids=[n for n, _, _ in UNUSABLE]
)
def test_unusable_keyslot_is_skipped_not_fatal(
    tmp_path: Path, edit: Callable[[Doc], None], reason: str
) -> None:
    img = _volume(tmp_path)
    _rewrite(img, edit)
    with FileRange(img) as storage:
        vol = Luks2Volume.open(storage)
        ks = vol.metadata.keyslots[0]
        assert ks.unusable is not None
        assert reason in ks.unusable
        with pytest.raises(AuthError):
            vol.unlock_passphrase(b"pw0")  # keyslot 0 is skipped
        with pytest.raises(FormatError, match=reason):
            vol.unlock_passphrase(b"pw0", keyslot=0)
        assert vol.unlock_passphrase(b"pw1") == 1
        raw = vol.metadata.keyslots[0].to_json()
        vol.add_token({"type": "x-test", "keyslots": ["1"]})  # a commit keeps keyslot 0 verbatim
    with FileRange(img) as storage:
        again = Luks2Volume.open(storage)
        assert again.metadata.keyslots[0].to_json() == raw
        again.remove_keyslot(0)  # an unusable keyslot can still be removed
        assert again.unlock_passphrase(b"pw1") == 1


def test_dump_names_the_unusable_keyslot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = _volume(tmp_path)
    _rewrite(img, _kdf_type("argon2"))
    assert main(["luks", "dump", str(img), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert "argon2" in desc["keyslots"]["0"]["unusable"]
    assert desc["keyslots"]["1"]["unusable"] is None


SEGMENTS = [
    ("cipher", _set("segments.0.encryption", "serpent-xts-plain64"), "serpent"),
    ("sector size", _set("segments.0.sector_size", 8192), "sector size 8192"),
    ("type", _set("segments.0.type", "linear"), "segment type 'linear'"),
    (
        "integrity",
        _set("segments.0.integrity", _INTEGRITY),
        "dm-integrity",
    ),
    ("detached header", _set("segments.0.offset", "0"), "detached header"),
]


@pytest.mark.parametrize(
    ("edit", "reason"), [(e, r) for _, e, r in SEGMENTS], ids=[n for n, _, _ in SEGMENTS]
)
def test_unsupported_segment_parses_and_refuses_the_data_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[Doc], None], reason: str
) -> None:
    img = _volume(tmp_path)
    _rewrite(img, edit)
    with FileRange(img) as storage:
        vol = Luks2Volume.open(storage)
        with pytest.raises(FormatError, match=reason):
            vol.unlock_passphrase(b"pw1")
        with pytest.raises(FormatError, match=reason):
            _ = vol.data_size
    assert main(["luks", "dump", str(img), "--json"]) == 0
    assert reason in json.loads(capsys.readouterr().out)["segment"]["unsupported"]


@pytest.mark.parametrize(
    ("time", "memory", "cpus"), [(1, 8, 4), (1, 8, 2**40), (0, 64, 1), (2**40, 64, 1)]
)
def test_argon2_parameter_errors_are_format_errors(time: int, memory: int, cpus: int) -> None:
    params = Argon2Params(KdfType.ARGON2ID, time, memory, cpus, bytes(32))
    with pytest.raises(FormatError, match="argon2id parameters"):
        ksc.derive(params, b"pw", 32)


def test_unknown_kdf_cannot_derive() -> None:
    with pytest.raises(FormatError, match="'argon2' is not supported"):
        ksc.derive(UnknownKdf("argon2"), b"pw", 32)


@pytest.mark.parametrize("label", ["données-chiffrées", "ラベル", "x" * 47])
def test_utf8_label_round_trips(tmp_path: Path, label: str) -> None:
    img = _volume(tmp_path, label=label)
    with FileRange(img) as storage:
        assert Luks2Volume.open(storage).label == label
