"""The one strict JSON loader for every JSON document bastion did not write itself.

:func:`loads` takes bytes (or text) and returns plain Python values, refusing with
:class:`~bastion.errors.FormatError` (or its :class:`~bastion.errors.LimitError`
branch for bounds) anything that is not one unambiguous RFC 8259 document:

* more than ``max_size`` bytes (default :data:`bastion.limits.JSON_MAX_SIZE`);
* bytes that are not UTF-8 (a byte-order mark included), and strings whose escapes
  decode to lone surrogates (they have no UTF-8 form);
* arrays/objects nested deeper than ``max_depth`` (default
  :data:`bastion.limits.JSON_MAX_DEPTH`). The depth is measured by a flat scan of the
  text *before* parsing, so neither the scan nor the stdlib parser recurses on deep
  attacker input (``b"[" * 100000`` is a LimitError, never a RecursionError);
* duplicate object keys (two parsers could pick different values);
* ``NaN``, ``Infinity``, ``-Infinity`` and numbers that overflow a float (``1e999``),
  and integers longer than Python's digit limit.

Pure: no I/O. :func:`loads_object` additionally requires a top-level object.
"""

from __future__ import annotations

import functools
import json
import math
import re
from itertools import accumulate
from typing import Any

from bastion.errors import FormatError, LimitError
from bastion.limits import JSON_MAX_DEPTH, JSON_MAX_SIZE

# A JSON string literal, or an unterminated one running to the end of the text. Every
# match attempt that starts at a quote succeeds (closing quote, end of text, or a lone
# backslash at the end), and the quantifiers are possessive, so the scan is linear even
# for hostile input such as '"' + '\\"' * n (no retry from every escaped quote).
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nesting_depth(text: str) -> int:
    """The deepest array/object nesting of ``text``, by a flat (non-recursive) scan.

    String literals are removed first so brackets inside strings do not count. The
    result is exact for valid JSON; for invalid JSON it is an upper bound, which is all
    the caller needs before handing the text to the parser.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    deepest = max(accumulate(map(_STEP.__getitem__, brackets)), default=0)
    return deepest if deepest > 0 else 0


def _no_duplicates(what: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):  # some key came twice: name the first repeated one
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise FormatError(f"{what}: duplicate JSON key {key!r}")
                seen.add(key)
        return out

    return hook


def _reject_constant(what: str) -> Any:
    def hook(name: str) -> Any:
        raise FormatError(f"{what}: JSON constant {name} is not allowed")

    return hook


def _finite_float(what: str) -> Any:
    def hook(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise FormatError(f"{what}: JSON number {text[:40]} is out of range")
        return value

    return hook


@functools.lru_cache(maxsize=128)
def _decoder(what: str) -> json.JSONDecoder:
    """The decoder ``json.loads`` would build with our hooks, built once per ``what``
    (building it cost as much as the checks this module adds). Decoders keep no state
    between documents: the C scanner's key memo is emptied after each one."""
    return json.JSONDecoder(
        object_pairs_hook=_no_duplicates(what),
        parse_constant=_reject_constant(what),
        parse_float=_finite_float(what),
    )


def _check_strings(value: Any, what: str) -> None:
    """Refuse lone surrogates anywhere (iterative walk; depth is already bounded)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            items: list[Any] = [item]
        elif isinstance(item, dict):
            items = list(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in items:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise FormatError(f"{what}: JSON string holds a lone surrogate escape") from exc


def loads(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str = "JSON document",
    max_size: int = JSON_MAX_SIZE,
    max_depth: int = JSON_MAX_DEPTH,
) -> Any:
    """Parse one strict JSON document (see the module docstring for what is refused).

    ``what`` names the document in error messages ("LUKS2 JSON area", "envelope", ...).
    """
    if isinstance(data, str):
        size = len(data.encode("utf-8", "surrogatepass"))
        if size > max_size:
            raise LimitError(f"{what} is {size} bytes, limit is {max_size}")
        text = data
    else:
        raw = bytes(data)
        if len(raw) > max_size:
            raise LimitError(f"{what} is {len(raw)} bytes, limit is {max_size}")
        if raw.startswith(b"\xef\xbb\xbf"):
            raise FormatError(f"{what}: JSON must not start with a byte-order mark")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{what} is not valid JSON: not UTF-8: {exc}") from exc
    # the nesting cannot exceed the number of openers: scan only when it could
    if _more_openers_than(text, max_depth):
        depth = nesting_depth(text)
        if depth > max_depth:
            raise LimitError(
                f"{what}: JSON nests {depth} deep, deeper than the limit of {max_depth}"
            )
    if text.startswith("\ufeff"):  # what json.loads refuses before decoding; so do we
        raise FormatError(f"{what}: JSON must not start with a byte-order mark")
    try:
        value = _decoder(what).decode(text)
    except FormatError:
        raise
    except RecursionError as exc:  # pragma: no cover - the depth scan runs first
        raise LimitError(f"{what}: JSON nests too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and int() beyond the digit limit
        raise FormatError(f"{what} is not valid JSON: {exc}") from exc
    # a lone surrogate comes from a backslash-u escape, or (text given as str) from the text
    # itself; without either no string can hold one and the walk is skipped (a lone
    # backslash is found by memchr, far faster than the two-character search)
    if ("\\" in text and "\\u" in text) or (isinstance(data, str) and not _encodes(text)):
        _check_strings(value, what)
    return value


def _more_openers_than(text: str, limit: int) -> bool:
    """Whether ``text`` holds more than ``limit`` of ``[`` and ``{`` together. Stops at
    ``limit + 1``; each step is a memchr-speed ``find``, where ``str.count`` walks every
    character (a 10 KB document of base64 took 15 us to count, this takes 1 us)."""
    n = 0
    for opener in "[{":
        i = text.find(opener)
        while i >= 0:
            n += 1
            if n > limit:
                return True
            i = text.find(opener, i + 1)
    return False


def _encodes(text: str) -> bool:
    """True when ``text`` has a UTF-8 form (no lone surrogate code point)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def loads_object(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str = "JSON document",
    max_size: int = JSON_MAX_SIZE,
    max_depth: int = JSON_MAX_DEPTH,
) -> dict[str, Any]:
    """:func:`loads`, then FormatError unless the document is a JSON object."""
    value = loads(data, what=what, max_size=max_size, max_depth=max_depth)
    if not isinstance(value, dict):
        raise FormatError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
