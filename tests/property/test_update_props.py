"""Hypothesis: the device-side update documents read back from untrusted storage (the
install journal, the slot records, health specifications) give a value or a bastion
FormatError, never anything else; a journal round-trips."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bastion.device.platform.base import ConsoleKind
from bastion.device.update import health, journal, slots
from bastion.errors import FormatError

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


class _Store:
    """The two Platform methods the readers use."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.lines: list[tuple[ConsoleKind, str]] = []

    def load(self, name: str) -> bytes | None:
        return self.files.get(name)

    def store(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def console(self, kind: ConsoleKind, message: str) -> None:
        self.lines.append((kind, message))


@given(st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_journal_reads_anything(raw: bytes) -> None:
    got = journal.load(_Store({journal.JOURNAL: raw}))  # type: ignore[arg-type]
    assert got is None or isinstance(got, journal.Journal)


@given(
    st.text(max_size=70),
    st.sampled_from(["a", "b"]),
    st.integers(0, 2**40),
    st.sampled_from(journal.Stage.ALL),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
)
def test_journal_round_trips(
    bundle: str, slot: str, gen: int, stage: str, done: int, downloaded: int
) -> None:
    store = _Store({})
    entry = journal.Journal(bundle, slot, gen, stage, done, downloaded)
    journal.save(store, entry)  # type: ignore[arg-type]
    assert journal.load(store) == entry  # type: ignore[arg-type]


@given(st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_slot_records_read_anything(raw: bytes) -> None:
    try:
        got = slots.load_records(_Store({slots.RECORDS: raw}))  # type: ignore[arg-type]
    except FormatError:
        return
    assert all(isinstance(r, slots.SlotRecord) for r in got.values())


@given(_json)
def test_health_spec_reads_anything(doc: Any) -> None:
    try:
        spec = health.parse_spec(json.dumps(doc))
    except FormatError:
        return
    assert isinstance(spec, health.Spec)
