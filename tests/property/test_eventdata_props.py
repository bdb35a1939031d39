"""Hypothesis: any event type and data decode to EventData or FormatError; describe never
raises and always gives bounded text without control or format characters."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats import eventdata as ed

types = st.one_of(st.sampled_from(sorted(ed.EVENT_TYPES)), st.integers(0, 2**32 - 1))


@given(types, st.binary(max_size=512))
def test_decode_gives_data_or_format_error(event_type: int, data: bytes) -> None:
    try:
        decoded = ed.decode(event_type, data)
    except FormatError:
        return
    assert isinstance(decoded, ed.EventData)


@given(types, st.binary(max_size=512))
def test_describe_is_total_and_inert(event_type: int, data: bytes) -> None:
    shown = ed.describe(event_type, data)
    for text in (shown.text, *(v for _, v in shown.fields)):
        assert len(text) <= ed.TEXT_MAX
        assert not any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for c in text)


@given(st.text(max_size=300))
def test_utf16_strings_read_back(text: str) -> None:
    encoded = text.encode("utf-16-le", errors="surrogatepass")
    shown = ed.describe(0xD, encoded + b"\0\0")
    assert shown.kind == "string"
    assert len(shown.text) <= ed.TEXT_MAX
