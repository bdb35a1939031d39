"""cryptsetup's LUKS2 header validation cases, rebuilt in Python (our own generator table).

cryptsetup's ``tests/luks2-validation-test`` runs one shell generator per case
(``tests/generators/generate-luks2-*.img.sh``): each takes a valid 16 KiB-metadata image
with eight keyslots, edits the JSON of one or both header copies with jq, recomputes the
sha256 checksum and writes the copies back (usually "killing" the other copy by
overwriting its magic with ``VACUUM``), then expects ``cryptsetup luksDump`` to accept
(``R``) or refuse (``F``) the image; ``T`` cases must also survive ``token remove``.

This module redoes each mutation from that description with :class:`Image` (no shell, no
jq, no copied images): the template is made by ``cryptsetup luksFormat`` in the test. The
``EXTRA`` table adds cases for the gaps the issue names (unknown KDF names as in
cryptsetup's own test header, other ciphers, UTF-8 labels, unbound keyslots, ...); their
expected letter is what cryptsetup 2.6.1 answers, checked live by the test like the rest.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KiB = 1024
MiB = 1024 * KiB
MDA = 16 * KiB  # template metadata size (cryptsetup's LUKS2_HDR_SIZE in the generators)
JSON_SIZE = MDA - 4096
CSUM_OFFSET = 448
DATA_OFFSET_BIG = 16 * MiB  # data offset the metadata-size cases move segment 0 to
Doc = dict[str, Any]


class Image:
    """A working copy of the template image with the generators' primitives."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.end = len(data)  # bytes to write back (the rest of the file stays sparse)
        self.bins = {0: bytearray(self.data[0:4096]), 1: bytearray(self.data[MDA : MDA + 4096])}
        self.areas = {0: self.json_text(0).encode(), 1: self.json_text(1).encode()}

    # --- reading ------------------------------------------------------------------------------

    def json_text(self, copy_: int) -> str:
        start = copy_ * MDA + 4096
        return bytes(self.data[start : start + JSON_SIZE]).split(b"\0", 1)[0].decode()

    def doc(self, copy_: int = 0) -> Doc:
        parsed: Doc = json.loads(self.json_text(copy_))
        return parsed

    # --- writing ------------------------------------------------------------------------------

    def put(self, offset: int, raw: bytes) -> None:
        if offset + len(raw) > len(self.data):  # grow: the image is zeros beyond the template
            self.data += bytes(offset + len(raw) - len(self.data))
        self.data[offset : offset + len(raw)] = raw
        self.end = max(self.end, offset + len(raw))

    def set_json(self, value: Doc | str | bytes, copy_: int) -> None:
        """The JSON text of one copy (compact as jq -c when given a document)."""
        if isinstance(value, dict):
            value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        self.areas[copy_] = value.encode() if isinstance(value, str) else value

    def set_hdr_size(self, copy_: int, size: int) -> None:
        self.bins[copy_][8:16] = size.to_bytes(8, "big")

    def set_hdr_offset(self, copy_: int, offset: int) -> None:
        self.bins[copy_][256:264] = offset.to_bytes(8, "big")

    def set_label(self, copy_: int, label: bytes) -> None:
        self.bins[copy_][24:72] = label.ljust(48, b"\0")

    def set_checksum_alg(self, copy_: int, alg: str) -> None:
        self.bins[copy_][72:104] = alg.encode().ljust(32, b"\0")

    def set_seqid(self, copy_: int, seqid: int) -> None:
        self.bins[copy_][16:24] = seqid.to_bytes(8, "big")

    def seal(self, copy_: int, *, mda: int = MDA, kill: bool = False) -> None:
        """Binary header + JSON area (NUL-padded to mda-4096), checksum, write at copy*mda."""
        json_size = mda - 4096
        text = self.areas[copy_][:json_size]
        area = bytearray(self.bins[copy_]) + text + bytes(json_size - len(text))
        alg = bytes(area[72:104]).split(b"\0", 1)[0].decode()
        area[CSUM_OFFSET : CSUM_OFFSET + 64] = bytes(64)
        area[CSUM_OFFSET : CSUM_OFFSET + 64] = hashlib.new(alg, area).digest().ljust(64, b"\0")
        if kill:
            area[0:6] = b"VACUUM"
        self.put(copy_ * mda, bytes(area))

    def kill_secondary(self) -> None:
        """Overwrite the template's secondary binary header magic (the generators' kill)."""
        killed = bytearray(self.bins[1])
        killed[0:6] = b"VACUUM"
        self.put(MDA, bytes(killed))

    def write_checksum(self, copy_: int, digest: bytes) -> None:
        self.put(copy_ * MDA + CSUM_OFFSET, digest)

    # --- the generators' two usual shapes ------------------------------------------------------

    def edit_primary(self, edit: Callable[[Doc], None]) -> None:
        """Edit copy 0's JSON, reseal it, kill the secondary (most generators)."""
        doc = self.doc(0)
        edit(doc)
        self.set_json(doc, 0)
        self.seal(0)
        self.kill_secondary()

    def edit_both(self, edit: Callable[[Doc], None]) -> None:
        """Edit the JSON and reseal both copies (the generators that keep both)."""
        doc = self.doc(0)
        edit(doc)
        for c in (0, 1):
            self.set_json(doc, c)
            self.seal(c)


@dataclass(frozen=True)
class Case:
    """One validation case: cryptsetup's letter (R, F, T) and the mutation."""

    name: str
    letter: str
    mutate: Callable[[Image], None]
    refusal: str | None = None  # bastion refuses on purpose; its message names this feature
    unusable: tuple[int, str] | None = None  # (keyslot, text) bastion marks unusable


def _primary(edit: Callable[[Doc], None]) -> Callable[[Image], None]:
    return lambda img: img.edit_primary(edit)


def _both(edit: Callable[[Doc], None]) -> Callable[[Image], None]:
    return lambda img: img.edit_both(edit)


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = copy.deepcopy(value)

    return edit


def _delete(path: str) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        del node[last]

    return edit


def _all(*edits: Callable[[Doc], None]) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        for e in edits:
            e(doc)

    return edit


# --- [1] checksums and [2] JSON repair ---------------------------------------------------------

_DOH = hashlib.sha256(b"Arbitrary chosen string: D'oh!\n").digest()
_HOD = hashlib.sha256(b"D'oh!: arbitrary chosen string\n").digest()
_FILLER = "all_work_and_no_play_makes_Jack_a_dull_boy_"


def _bad_checksum(*copies: int) -> Callable[[Image], None]:
    def mutate(img: Image) -> None:
        for c in copies:
            img.write_checksum(c, _DOH if c == 0 else (_HOD if len(copies) == 2 else _DOH))

    return mutate


def _garbage_json_good_checksum(copy_: int) -> Callable[[Image], None]:
    def mutate(img: Image) -> None:
        text = img.json_text(copy_)[:-1] + ',"'
        while len(text) <= JSON_SIZE:
            text += _FILLER
        img.set_json(text[:JSON_SIZE], copy_)  # the whole area, no terminating NUL
        img.seal(copy_)

    return mutate


def _fill_config(total: int) -> Callable[[Image], None]:
    """Insert "config_key":"XX..X" into config so the JSON text is ``total`` bytes."""

    def mutate(img: Image) -> None:
        text = img.json_text(0)
        mark = '"config":{'
        at = text.index(mark) + len(mark)
        key = '"config_key":"'
        sep = "" if text[at] == "}" else ","
        fill = total - len(text) - len(key) - 1 - len(sep)
        img.set_json(text[:at] + key + "X" * fill + '"' + sep + text[at:], 0)
        img.seal(0)
        img.kill_secondary()

    return mutate


def _leftover(slot: str, kdf_type: str) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        kdf = doc["keyslots"][slot]["kdf"]
        kdf["type"] = kdf_type
        kdf["iterations"] = 1001
        kdf["hash"] = "sha256"

    return edit


# --- [3] JSON area restrictions ---------------------------------------------------------------


def _raw_primary(change: Callable[[str], str]) -> Callable[[Image], None]:
    def mutate(img: Image) -> None:
        img.set_json(change(img.json_text(0)), 0)
        img.seal(0)
        img.kill_secondary()

    return mutate


_QUOTE = "[Homer J. Simpson]: Keep looking shocked and move slowly towards the cake."


def _overlap(variant: int) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        six = doc["keyslots"]["6"]["area"]
        seven = doc["keyslots"]["7"]["area"]
        off, size = int(six["offset"]), int(six["size"])
        if variant == 0:
            seven["offset"], seven["size"] = six["offset"], six["size"]
        elif variant == 1:
            seven["offset"], seven["size"] = str(off + 1), str(size - 1)
        else:
            seven["offset"] = str(off + size - 1)

    return edit


def _next_id(section: str) -> Callable[[Doc], str]:
    return lambda doc: str(int(max(doc[section])) + 1)  # jq: keys | max | tonumber + 1


def _append(path: str, value: Callable[[Doc], str]) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        section, n, key = path.split(".")
        doc[section][n][key] = [*doc[section][n][key], value(doc)]

    return edit


def _token_missing_keyslot(doc: Doc) -> None:
    doc["tokens"]["0"] = {"type": "dummy", "keyslots": ["0", _next_id("keyslots")(doc)]}


def _drop_first_digest_keyslot(doc: Doc) -> None:
    del doc["digests"]["0"]["keyslots"][0]


def _second_digest(doc: Doc) -> None:
    doc["digests"]["1"] = copy.deepcopy(doc["digests"]["0"])
    doc["digests"]["1"]["keyslots"] = ["1"]


# --- [5] segments --------------------------------------------------------------------------------


def _two_segments(doc: Doc) -> None:
    seg = doc["segments"]
    seg["0"]["size"] = "512"
    seg["1"] = {"type": "some", "offset": str(int(seg["0"]["offset"]) + 512), "size": "dynamic"}


def _unknown_segment(doc: Doc) -> None:
    old = doc["segments"]["0"]
    doc["segments"]["0"] = {
        "type": "some_type",
        "offset": old["offset"],
        "size": old["size"],
        "a_field": 0,
    }


def _backup_gap(doc: Doc) -> None:
    seg = doc["segments"]
    seg[str(len(seg) + 1)] = {
        "type": "linear",
        "offset": "512",
        "size": "512",
        "flags": ["backup-x"],
    }


def _backup_far(doc: Doc) -> None:
    seg = doc["segments"]
    start = int(seg["0"]["offset"])
    for i in range(1, 65):
        seg[str(i)] = {"type": "linear", "offset": str(start + 512), "size": "512"}
    seg["268435472"] = {
        "type": "linear",
        "offset": "512",
        "size": "512",
        "flags": ["backup-x"],
    }


# --- [6] config and metadata sizes ---------------------------------------------------------------


def _keyslots_size(value: Callable[[Doc], int]) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        doc["config"]["keyslots_size"] = str(value(doc))

    return edit


def _json_size_mismatch(img: Image) -> None:
    """Binary headers say 32 KiB, config.json_size still says 12 KiB."""
    mda = 32 * KiB
    text = img.json_text(0)
    for c in (0, 1):
        img.set_json(text, c)
        img.set_hdr_size(c, mda)
    img.set_hdr_offset(1, mda)
    img.seal(0, mda=mda)
    img.seal(1, mda=mda)


def _metadata_size(
    mda: int,
    *,
    secondary: bool,
    shift: int = 0,
    edit: Callable[[Doc, int], None] | None = None,
    bogus: tuple[int, ...] = (),
) -> Callable[[Image], None]:
    """Move to metadata size ``mda``: shift keyslot areas by 2*(mda-16K)+shift, set
    json_size, data at 16 MiB; keep the primary (kill the secondary) or the reverse.
    ``bogus`` copies get a 2 GiB hdr_size instead."""

    def mutate(img: Image) -> None:
        doc = img.doc(0)
        diff = 2 * (mda - MDA) + shift
        for ks in doc["keyslots"].values():
            ks["area"]["offset"] = str(int(ks["area"]["offset"]) + diff)
        doc["config"]["json_size"] = str(mda - 4096)
        doc["segments"]["0"]["offset"] = str(DATA_OFFSET_BIG)
        if edit is not None:
            edit(doc, mda)
        for c in (0, 1):
            img.set_json(doc, c)
            img.set_hdr_size(c, 2 * 1024 * MiB if c in bogus else mda)
        if secondary:
            img.set_hdr_offset(1, mda)
        img.seal(0, mda=mda, kill=secondary)
        img.seal(1, mda=mda, kill=not secondary)

    return mutate


def _ks7_overflows(doc: Doc, mda: int) -> None:
    ks7 = doc["keyslots"]["7"]["area"]
    end = int(doc["config"]["keyslots_size"]) + 2 * mda
    ks7["offset"] = str(end - int(ks7["size"]) + 1)


def _keyslots_into_data(doc: Doc, mda: int) -> None:
    doc["config"]["keyslots_size"] = str(DATA_OFFSET_BIG - 2 * mda + 4096)


# --- [8] non-compact JSON --------------------------------------------------------------------


def _non_compact(align: bool) -> Callable[[Image], None]:
    def mutate(img: Image) -> None:
        doc = img.doc(0)
        doc["tokens"]["0"] = {"type": "a", "keyslots": []}
        text = json.dumps(doc, separators=(",", ":"))
        pad = 4096 - len(text) % 4096 if align else 1
        text = text.replace('"type":"luks2"', '"type":' + " " * pad + '"luks2"', 1)
        for c in (0, 1):
            img.set_json(text, c)
            img.seal(c)

    return mutate


_SIZES = {"32k": 32 * KiB, "64k": 64 * KiB, "128k": 128 * KiB, "256k": 256 * KiB}
_SIZES.update({"512k": 512 * KiB, "1m": MiB, "2m": 2 * MiB, "4m": 4 * MiB})

CASES: list[Case] = [
    # [1] auto-recovery
    Case("invalid-checksum-hdr0", "R", _bad_checksum(0)),
    Case("invalid-checksum-hdr1", "R", _bad_checksum(1)),
    Case("invalid-checksum-both-hdrs", "F", _bad_checksum(0, 1)),
    # [2] malformed JSON with a correct checksum, in-memory repairs
    Case("corrupted-hdr0-with-correct-chks", "R", _garbage_json_good_checksum(0)),
    Case("corrupted-hdr1-with-correct-chks", "R", _garbage_json_good_checksum(1)),
    Case("correct-full-json0", "R", _fill_config(JSON_SIZE - 1)),
    Case("argon2-leftover-params", "R", _primary(_leftover("1", "pbkdf2"))),
    Case("pbkdf2-leftover-params-0", "R", _primary(_leftover("2", "argon2i"))),
    Case("pbkdf2-leftover-params-1", "R", _primary(_leftover("2", "argon2id"))),
    # [3] JSON area restrictions
    Case("non-null-byte-beyond-json0", "F", _raw_primary(lambda t: t + "X")),
    Case(
        "non-null-bytes-beyond-json0",
        "F",
        _raw_primary(lambda t: t + "\0" * 20 + _QUOTE),
    ),
    Case("missing-trailing-null-byte-json0", "F", _fill_config(JSON_SIZE)),
    Case("invalid-opening-char-json0", "F", _raw_primary(lambda t: " " + t)),
    Case("invalid-object-type-json0", "F", _raw_primary(lambda t: "[" + t + "]")),
    Case("overlapping-areas-c0-json0", "F", _primary(_overlap(0))),
    Case("overlapping-areas-c1-json0", "F", _primary(_overlap(1))),
    Case("overlapping-areas-c2-json0", "F", _primary(_overlap(2))),
    Case(
        "area-in-json-hdr-space-json0",
        "F",
        _primary(
            _all(
                _set("keyslots.0.area.offset", str(2 * MDA - 1)), _set("keyslots.0.area.size", "1")
            )
        ),
    ),
    Case(
        "missing-keyslot-referenced-in-digest",
        "F",
        _primary(_append("digests.0.keyslots", _next_id("keyslots"))),
    ),
    Case(
        "missing-segment-referenced-in-digest",
        "F",
        _primary(_append("digests.0.segments", _next_id("segments"))),
    ),
    Case("missing-keyslot-referenced-in-token", "F", _primary(_token_missing_keyslot)),
    Case("keyslot-missing-digest", "F", _primary(_drop_first_digest_keyslot)),
    Case("keyslot-too-many-digests", "F", _primary(_second_digest)),
    # [4] integer limits
    Case("uint64-max-segment-size", "R", _primary(_set("segments.0.size", "18446744073709551104"))),
    Case(
        "uint64-overflow-segment-size",
        "F",
        _primary(_set("segments.0.size", "18446744073709551616")),
    ),
    Case("uint64-signed-segment-size", "F", _primary(_set("segments.0.size", "-512"))),
    # [5] segments
    Case("segment-missing-type", "F", _primary(_delete("segments.0.type"))),
    Case("segment-wrong-type", "F", _primary(_set("segments.0.type", 42))),
    Case("segment-missing-offset", "F", _primary(_delete("segments.0.offset"))),
    Case("segment-wrong-offset", "F", _primary(_set("segments.0.offset", "-42"))),
    Case("segment-missing-size", "F", _primary(_delete("segments.0.size"))),
    Case("segment-wrong-size-0", "F", _primary(_set("segments.0.size", 4096))),
    Case("segment-wrong-size-1", "F", _primary(_set("segments.0.size", "automatic"))),
    Case("segment-wrong-size-2", "F", _primary(_set("segments.0.size", "511"))),
    Case("segment-crypt-missing-encryption", "F", _primary(_delete("segments.0.encryption"))),
    Case("segment-crypt-wrong-encryption", "F", _primary(_set("segments.0.encryption", {}))),
    Case("segment-crypt-missing-ivoffset", "F", _primary(_delete("segments.0.iv_tweak"))),
    Case("segment-crypt-wrong-ivoffset", "F", _primary(_set("segments.0.iv_tweak", "dynamic"))),
    Case("segment-crypt-missing-sectorsize", "F", _primary(_delete("segments.0.sector_size"))),
    Case("segment-crypt-wrong-sectorsize-0", "F", _primary(_set("segments.0.sector_size", 1023))),
    Case("segment-crypt-wrong-sectorsize-1", "F", _primary(_set("segments.0.sector_size", "4096"))),
    Case("segment-crypt-wrong-sectorsize-2", "F", _primary(_set("segments.0.sector_size", -1024))),
    Case("segment-unknown-type", "R", _primary(_unknown_segment)),
    Case("segment-two", "R", _primary(_two_segments)),
    Case("segment-wrong-flags", "F", _primary(_set("segments.0.flags", "hello"))),
    Case("segment-wrong-flags-element", "F", _primary(_set("segments.0.flags", ["hello", 1]))),
    Case("segment-wrong-backup-key-0", "F", _primary(_backup_gap)),
    Case("segment-wrong-backup-key-1", "F", _primary(_backup_far)),
    Case("segment-crypt-empty-encryption", "F", _primary(_set("segments.0.encryption", ""))),
    # [6] config section and metadata sizes
    Case(
        "invalid-keyslots-size-c0",
        "F",
        _primary(_keyslots_size(lambda d: int(d["segments"]["0"]["offset"]) - 2 * MDA + 4096)),
    ),
    Case(
        "invalid-keyslots-size-c1",
        "F",
        _primary(_keyslots_size(lambda d: int(d["config"]["keyslots_size"]) - 1)),
    ),
    Case(
        "invalid-keyslots-size-c2",
        "F",
        _primary(
            _keyslots_size(
                lambda d: sum(int(k["area"]["size"]) for k in d["keyslots"].values()) - 4096
            )
        ),
    ),
    Case("invalid-json-size-c0", "F", _primary(_set("config.json_size", str(JSON_SIZE + 4096)))),
    Case("invalid-json-size-c1", "F", _primary(_set("config.json_size", str(JSON_SIZE - 4096)))),
    Case("invalid-json-size-c2", "F", _json_size_mismatch),
    *(
        Case(f"metadata-size-{name}", "R", _metadata_size(size, secondary=False))
        for name, size in _SIZES.items()
    ),
    Case("metadata-size-64k-inv-area-c0", "F", _metadata_size(64 * KiB, secondary=False, shift=-1)),
    Case(
        "metadata-size-64k-inv-area-c1",
        "F",
        _metadata_size(64 * KiB, secondary=False, edit=_ks7_overflows),
    ),
    Case(
        "metadata-size-64k-inv-keyslots-size-c0",
        "F",
        _metadata_size(64 * KiB, secondary=False, edit=_keyslots_into_data),
    ),
    *(
        Case(f"metadata-size-{name}-secondary", "R", _metadata_size(size, secondary=True))
        for name, size in {"16k": MDA, **_SIZES}.items()
    ),
    Case("metadata-size-invalid", "F", _metadata_size(MiB, secondary=False, bogus=(0, 1))),
    Case("metadata-size-invalid-secondary", "F", _metadata_size(MiB, secondary=True, bogus=(1,))),
    # [7] invalid object properties
    Case("invalid-tokens", "F", _both(_all(_delete("tokens"), _set("tokens", 42)))),
    Case(
        "invalid-top-objects",
        "F",
        _both(
            _all(
                _delete("tokens"),
                _set("tokens", 42),
                _delete("digests"),
                _set("digests", 42),
                _delete("keyslots"),
                _set("keyslots", []),
                _delete("segments"),
                _set("segments", "hi"),
            )
        ),
    ),
    Case("keyslot-invalid-area", "F", _both(_set("keyslots.0.area", 42))),
    Case("keyslot-invalid-area-size", "F", _both(_set("keyslots.0.area.size", str(2**64 - 1)))),
    Case(
        "keyslot-invalid-objects",
        "F",
        _both(_all(_set("keyslots.0.kdf", 42), _set("keyslots.0.af", 42))),
    ),
    Case("keyslot-invalid-af", "F", _both(_set("keyslots.0.af.type", 42))),
    # [8] non-compact JSON survives a write
    Case("non-compact-json-token-0", "T", _non_compact(align=False)),
    Case("non-compact-json-4k-token-0", "T", _non_compact(align=True)),
]


# --- the gaps the hardening issue names (verdicts are cryptsetup 2.6.1's, checked live) --------


def _label(raw: bytes) -> Callable[[Image], None]:
    def mutate(img: Image) -> None:
        for c in (0, 1):
            img.set_label(c, raw)
            img.seal(c)

    return mutate


def _checksum_alg(alg: str) -> Callable[[Image], None]:
    def mutate(img: Image) -> None:
        for c in (0, 1):
            img.set_checksum_alg(c, alg)
            img.seal(c)

    return mutate


def _unbind(slot: str) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        dg = doc["digests"]["0"]
        dg["keyslots"] = [k for k in dg["keyslots"] if k != slot]
        doc["digests"]["1"] = {**copy.deepcopy(dg), "keyslots": [slot], "segments": []}

    return edit


def _duplicate_key(img: Image) -> None:
    text = img.json_text(0)
    img.set_json(text.replace('"config":{', '"config":{"json_size":"0",', 1), 0)
    img.seal(0)
    img.kill_secondary()


def _ks7_unaligned(doc: Doc) -> None:
    area = doc["keyslots"]["7"]["area"]
    area["offset"] = str(int(area["offset"]) + 512)


def _integrity(doc: Doc) -> None:
    doc["segments"]["0"]["integrity"] = {
        "type": "hmac(sha256)",
        "journal_encryption": "none",
        "journal_integrity": "none",
    }


def _older_secondary(img: Image) -> None:
    img.set_seqid(1, int.from_bytes(img.bins[0][16:24], "big") - 1)
    img.seal(1)


EXTRA: list[Case] = [
    Case(
        "x-kdf-argon2-name",
        "R",
        _primary(_set("keyslots.0.kdf.type", "argon2")),
        None,
        (0, "argon2"),
    ),
    Case(
        "x-kdf-unknown-name",
        "R",
        _primary(_set("keyslots.3.kdf.type", "scrypt")),
        unusable=(3, "scrypt"),
    ),
    Case(
        "x-argon2-memory-below-lanes",
        "R",
        _primary(_set("keyslots.1.kdf.memory", 4)),
        unusable=(1, "memory"),
    ),
    Case(
        "x-pbkdf2-hash-unknown",
        "R",
        _primary(_set("keyslots.0.kdf.hash", "whirlpool")),
        unusable=(0, "whirlpool"),
    ),
    Case(
        "x-keyslot-cipher-unknown",
        "R",
        _primary(_set("keyslots.4.area.encryption", "serpent-xts-plain64")),
        unusable=(4, "serpent"),
    ),
    Case(
        "x-af-hash-unknown",
        "R",
        _primary(_set("keyslots.5.af.hash", "whirlpool")),
        unusable=(5, "whirlpool"),
    ),
    Case(
        "x-af-stripes-other",
        "R",
        _primary(_set("keyslots.5.af.stripes", 2000)),
        unusable=(5, "stripes"),
    ),
    Case(
        "x-keyslot-type-unknown",
        "R",
        _primary(_set("keyslots.6.type", "future")),
        unusable=(6, "future"),
    ),
    Case("x-keyslot-type-reencrypt-alone", "F", _primary(_set("keyslots.6.type", "reencrypt"))),
    Case("x-keyslot-area-unaligned", "R", _primary(_ks7_unaligned)),
    Case("x-segment-sector-8192", "R", _primary(_set("segments.0.sector_size", 8192))),
    Case(
        "x-segment-cipher-other",
        "R",
        _primary(_set("segments.0.encryption", "serpent-xts-plain64")),
    ),
    Case("x-segment-integrity", "R", _primary(_integrity)),
    Case("x-segment-detached", "R", _primary(_set("segments.0.offset", "0"))),
    Case("x-segment-flags", "R", _primary(_set("segments.0.flags", ["x-custom"]))),
    Case("x-unbound-keyslot", "R", _primary(_unbind("7"))),
    Case(
        "x-token-luks2-prefix", "R", _primary(_set("tokens.0", {"type": "luks2-x", "keyslots": []}))
    ),
    Case("x-requirement-unknown", "R", _primary(_set("config.requirements", {"mandatory": ["x"]}))),
    Case("x-config-flags", "R", _primary(_set("config.flags", ["allow-discards", "x-new"]))),
    Case("x-config-flags-wrong", "F", _primary(_set("config.flags", "allow-discards"))),
    Case("x-digest-hash-sha384", "R", _primary(_set("digests.0.hash", "sha384"))),
    Case("x-label-utf8", "R", _label("données-chiffrées".encode())),
    Case("x-label-not-utf8", "R", _label(b"\xff\xfe")),
    Case("x-checksum-sha512", "R", _checksum_alg("sha512")),
    Case("x-secondary-older", "R", _older_secondary),
    # deliberate refusals: cryptsetup accepts, bastion refuses, naming the feature
    Case(
        "x-digest-hash-unknown",
        "R",
        _primary(_set("digests.0.hash", "whirlpool")),
        refusal="unsupported hash 'whirlpool'",
    ),
    Case(
        "x-digest-type-unknown",
        "R",
        _primary(_set("digests.0.type", "argon2")),
        refusal="unsupported digest type 'argon2'",
    ),
    Case("x-duplicate-json-key", "R", _duplicate_key, refusal="duplicate JSON key 'json_size'"),
]
