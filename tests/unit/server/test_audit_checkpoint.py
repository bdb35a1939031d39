"""Pure audit verification (no database): MACs over rows, and the checkpoint codec."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError, SignatureError, TamperError
from bastion.server.audit.chain import (
    GENESIS,
    AuditHeadRow,
    AuditRow,
    Checkpoint,
    HmacAuditKey,
    encode_tag,
    entry_hash,
    entry_mac_input,
    head_mac_input,
    make_checkpoint,
    verify_checkpoint,
    verify_rows,
)

KEY = HmacAuditKey(b"k" * 32)
SERVER = "ab" * 16
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def chain(n: int, key: HmacAuditKey = KEY) -> tuple[list[AuditRow], AuditHeadRow]:
    rows: list[AuditRow] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        fields = dict(at=T0, actor=f"user:{seq}", event="e", org_id="o", details="{}")
        digest = entry_hash(seq=seq, prev=prev, **fields)  # type: ignore[arg-type]
        mac = encode_tag(key.tag(entry_mac_input(SERVER, seq, digest)))
        rows.append(AuditRow(seq=seq, prev_hash=prev, hash=digest, mac=mac, **fields))  # type: ignore[arg-type]
        prev = digest
    head_mac = encode_tag(key.tag(head_mac_input(SERVER, n, prev)))
    return rows, AuditHeadRow(n, prev, SERVER, head_mac)


def test_intact_with_checkpoint() -> None:
    rows, head = chain(4)
    cp = verify_checkpoint(make_checkpoint(KEY, SERVER, 2, rows[1].hash, T0).to_bytes(), KEY)
    report = verify_rows(rows, head, KEY, cp)
    assert (report.entries, report.checkpoint_seq) == (4, 2)


def _truncate_with_head_from_entry(rows: list[AuditRow], head: AuditHeadRow):  # type: ignore[no-untyped-def]
    return rows[:-1], dataclasses.replace(head, seq=3, hash=rows[2].hash, mac=rows[2].mac)


CASES = {
    "mac stripped": lambda r, h: ([r[0], dataclasses.replace(r[1], mac=None), *r[2:]], h),
    "mac not base64": lambda r, h: ([r[0], dataclasses.replace(r[1], mac="!!"), *r[2:]], h),
    "mac of another entry": lambda r, h: (
        [r[0], dataclasses.replace(r[1], mac=r[0].mac), *r[2:]],
        h,
    ),
    "head mac stripped": lambda r, h: (r, dataclasses.replace(h, mac=None)),
    "head from last entry's mac": _truncate_with_head_from_entry,
    "server id changed": lambda r, h: (r, dataclasses.replace(h, server_id="cd" * 16)),
    "server id missing": lambda r, h: (r, dataclasses.replace(h, server_id=None)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mac_table(case: str) -> None:
    rows, head = chain(4)
    bad_rows, bad_head = CASES[case](rows, head)
    with pytest.raises(TamperError):
        verify_rows(bad_rows, bad_head, KEY)


def test_wrong_key() -> None:
    rows, head = chain(3)
    with pytest.raises(TamperError, match="MAC does not verify"):
        verify_rows(rows, head, HmacAuditKey(os.urandom(32)))


def test_checkpoint_table() -> None:
    rows, head = chain(3)
    ahead = make_checkpoint(KEY, SERVER, 5, "00" * 32, T0)
    with pytest.raises(TamperError, match="removed from the end"):
        verify_rows(rows, head, KEY, ahead)
    other = make_checkpoint(KEY, "cd" * 16, 3, head.hash, T0)
    with pytest.raises(TamperError, match="from audit server"):
        verify_rows(rows, head, KEY, other)
    rewritten = make_checkpoint(KEY, SERVER, 2, "11" * 32, T0)
    with pytest.raises(TamperError, match="rewritten"):
        verify_rows(rows, head, KEY, rewritten)
    genuine = make_checkpoint(KEY, SERVER, 3, head.hash, T0).to_bytes()
    with pytest.raises(SignatureError):
        verify_checkpoint(genuine, HmacAuditKey(b"x" * 32))
    forged = genuine.replace(b'"seq": 3', b'"seq": 2')
    assert forged != genuine
    with pytest.raises(SignatureError):
        verify_checkpoint(forged, KEY)


def test_short_hmac_key_refused() -> None:
    with pytest.raises(FormatError):
        HmacAuditKey(b"short")


@given(seq=st.integers(0, 2**63 - 1), digest=st.binary(min_size=32, max_size=32))
def test_checkpoint_roundtrip(seq: int, digest: bytes) -> None:
    cp = make_checkpoint(KEY, SERVER, seq, digest.hex(), T0)
    assert Checkpoint.parse(cp.to_bytes()) == cp


def _parse_or_error(data: bytes) -> object:
    try:
        return Checkpoint.parse(data)
    except FormatError as exc:
        return exc


@given(st.binary(max_size=600))
def test_checkpoint_parse_arbitrary_bytes(data: bytes) -> None:
    assert isinstance(_parse_or_error(data), Checkpoint | FormatError)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["format", "version", "server", "seq", "hash", "time", "alg", "key_id", "signature"]


@given(field=st.sampled_from(FIELDS), value=JSON_VALUES)
def test_checkpoint_parse_mutated_field(field: str, value: object) -> None:
    import json

    doc = json.loads(make_checkpoint(KEY, SERVER, 1, "00" * 32, T0).to_bytes())
    doc[field] = value
    assert isinstance(_parse_or_error(json.dumps(doc).encode()), Checkpoint | FormatError)
