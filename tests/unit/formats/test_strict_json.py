"""The one strict JSON loader: a table of refused documents and the flat depth scan."""

from __future__ import annotations

import pytest

from bastion.errors import FormatError, LimitError
from bastion.formats import strict_json
from bastion.limits import JSON_MAX_DEPTH


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (b"[" * 100_000, LimitError, "nests"),
        (b"{" * 100_000, LimitError, "nests"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, LimitError, "nests"),
        (b"[" * (JSON_MAX_DEPTH + 1) + b"]" * (JSON_MAX_DEPTH + 1), LimitError, "nests"),
        (b'{"a": 1, "a": 2}', FormatError, "duplicate"),
        (b'[{"x": {"b": 1, "b": 1}}]', FormatError, "duplicate"),
        (b"NaN", FormatError, "NaN"),
        (b"[Infinity]", FormatError, "Infinity"),
        (b'{"a": -Infinity}', FormatError, "Infinity"),
        (b"1e999", FormatError, "out of range"),
        (b"-1e400", FormatError, "out of range"),
        (b"1" * 5000, FormatError, "not valid JSON"),  # beyond the int digit limit
        (b'"\\ud800"', FormatError, "surrogate"),
        (b'{"\\udfff": 1}', FormatError, "surrogate"),
        (b'"\xff"', FormatError, "UTF-8"),
        (b'"\xc0\xaf"', FormatError, "UTF-8"),  # overlong encoding
        (b'"\xed\xa0\x80"', FormatError, "UTF-8"),  # encoded surrogate
        (b'\xef\xbb\xbf{"a": 1}', FormatError, "byte-order mark"),
        (b"", FormatError, "not valid JSON"),
        (b"{", FormatError, "not valid JSON"),
        (b'{"a": 1} x', FormatError, "not valid JSON"),
        (b" " * (strict_json.JSON_MAX_SIZE + 1), LimitError, "limit"),
    ],
)
def test_refused(data: bytes, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        strict_json.loads(data)


def test_accepts_plain_json_and_brackets_in_strings() -> None:
    doc = b'{"a": [1, 2.5, -3e2, true, null], "b": "[[[{{{\\"]]]", "c": "\\u00e9\\ud83d\\ude00"}'
    assert strict_json.loads(doc) == {
        "a": [1, 2.5, -300.0, True, None],
        "b": '[[[{{{"]]]',
        "c": "\u00e9\U0001f600",
    }
    deep = b"[" * JSON_MAX_DEPTH + b"]" * JSON_MAX_DEPTH
    assert strict_json.loads(deep) is not None
    assert strict_json.loads('{"x": 1}') == {"x": 1}


def test_depth_scan_is_flat_and_ignores_strings() -> None:
    assert strict_json.nesting_depth('"[[[["') == 0
    assert strict_json.nesting_depth('[{"a": "]]]]"}, [[]]]') == 3
    assert strict_json.nesting_depth("[" * 1_000_000) == 1_000_000  # no recursion


def test_size_and_depth_bounds_are_per_call() -> None:
    with pytest.raises(LimitError):
        strict_json.loads(b"[1, 2, 3]", max_size=4)
    with pytest.raises(LimitError):
        strict_json.loads(b"[[1]]", max_depth=1)


def test_loads_object_requires_an_object() -> None:
    with pytest.raises(FormatError, match="must be a JSON object"):
        strict_json.loads_object(b"[1]", what="thing")


@pytest.mark.parametrize(
    "text",
    [
        '"' + '\\"' * 1_000_000,  # one unterminated string full of escaped quotes
        '"' + '\\"' * 1_000_000 + "\\",  # ... ending in a lone backslash
        '"\\' * 1_000_000,
        '"' * 2_000_000,
    ],
    ids=["escaped-quotes", "trailing-backslash", "quote-backslash", "quotes"],
)
def test_depth_scan_is_linear_on_hostile_strings(text: str) -> None:
    import time

    start = time.monotonic()
    with pytest.raises(FormatError):
        strict_json.loads(text)
    assert time.monotonic() - start < 2.0  # the old scan took minutes: quadratic retries


def test_fast_paths_refuse_what_the_full_checks_refuse() -> None:
    """The depth scan runs only when the openers could exceed the limit, the surrogate
    walk only when a backslash-u escape or (str input) a raw surrogate is there: each
    still refuses its case, and brackets in strings still do not count."""
    with pytest.raises(LimitError, match="nests 3 deep"):
        strict_json.loads("[[[1]]]", max_depth=2)
    assert strict_json.loads('["[[[[", 1]', max_depth=2) == ["[[[[", 1]  # scanned, in strings
    with pytest.raises(FormatError, match="surrogate"):
        strict_json.loads('{"a": "x\ud800"}')  # a raw lone surrogate in a str document
    with pytest.raises(FormatError, match="surrogate"):
        strict_json.loads('{"a": ["ok", "\\udc00"]}')
    assert strict_json.loads('{"a": "caf\u00e9"}') == {"a": "caf\u00e9"}
