"""The sim's systemd-boot: which Boot Loader Specification entry it boots, and the rename.

Pure decisions over the ESP's file names and each UKI's ``.osrel``, as systemd-boot 252
makes them for type #2 entries (``EFI/Linux/*.efi``) when ``loader.conf`` names no
default and no ``LoaderEntryDefault``/``LoaderEntryOneShot`` variable is set (bastion
writes neither):

1. entries are sorted by ``config_entry_compare``: entries with no tries left ("bad",
   ``NAME+0-DONE``) after all others; entries with a sort key (``.osrel`` ``IMAGE_ID``,
   else ``ID``) before those without; by sort key ascending; by version (``IMAGE_VERSION``,
   else ``VERSION_ID``, else ``VERSION``) newest first; by entry name newest first;
   then more tries left first and fewer tries done first;
2. the first entry is the default, and it is booted even when it is bad (the
   specification: bad entries are booted when nothing else is left);
3. before loading it, an entry with a counter and tries left is renamed
   ``NAME+(LEFT-1)-(DONE+1)`` (:meth:`bastion.formats.bls.EntryName.booted`);
4. the UKI is loaded through the firmware's LoadImage (Secure Boot check and PCR 4);
   a refusal ends the boot (systemd-boot returns the error to the firmware, which has no
   other boot option): that is how a failing entry uses up its tries.

Entries that are not UKIs (no PE image, no ``.osrel`` with a name or id) are skipped as
systemd-boot skips them. Versions compare with :func:`version_compare`, systemd's
``strverscmp_improved`` restricted to what os-release versions hold (digits, letters,
``.``, ``-``, ``~``, ``^``, ``_``, ``+``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from bastion.errors import FormatError
from bastion.formats import bls

#: the removable-media path the firmware starts, where bastion installs systemd-boot
LOADER_PATH = "EFI/BOOT/BOOTX64.EFI"
#: Boot Loader Specification type #2 entries
ENTRIES_DIR = "EFI/Linux"
LOADER_CONF = "loader/loader.conf"


def parse_osrel(data: bytes) -> dict[str, str]:
    """os-release ``KEY=value`` lines (quotes removed); FormatError if not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f".osrel is not UTF-8: {exc}") from exc
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


_VALID = frozenset("~-^.")


def _segment(text: str, pos: int, digits: bool) -> tuple[str, int]:
    end = pos
    while end < len(text) and (text[end].isdigit() if digits else text[end].isalpha()):
        end += 1
    return text[pos:end], end


def version_compare(a: str, b: str) -> int:
    """systemd's ``strverscmp_improved``: -1 when ``a`` is older, 0, or 1 when newer.

    ``~`` is older than anything (even the end), then the end of the string, then ``-``,
    ``^`` and ``.``; numeric segments compare by value and are newer than letters."""
    i = j = 0
    while True:
        while i < len(a) and not (a[i].isascii() and (a[i].isalnum() or a[i] in _VALID)):
            i += 1
        while j < len(b) and not (b[j].isascii() and (b[j].isalnum() or b[j] in _VALID)):
            j += 1
        ca = a[i] if i < len(a) else ""
        cb = b[j] if j < len(b) else ""
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i, j = i + 1, j + 1
            continue
        if not ca or not cb:
            return (ca > cb) - (ca < cb)
        if ca in "-^." or cb in "-^.":
            for mark in "-^.":
                if mark in (ca, cb):
                    if ca != mark:
                        return 1
                    if cb != mark:
                        return -1
                    break
            i, j = i + 1, j + 1
            continue
        if ca.isdigit() or cb.isdigit():
            sa, i = _segment(a, i, True)
            sb, j = _segment(b, j, True)
            if not sa:
                return -1
            if not sb:
                return 1
            na, nb = int(sa), int(sb)
            if na != nb:
                return -1 if na < nb else 1
            continue
        sa, i = _segment(a, i, False)
        sb, j = _segment(b, j, False)
        if sa != sb:
            return -1 if sa < sb else 1


@dataclass(frozen=True, slots=True)
class Candidate:
    """One type #2 entry: its file name, parsed counter, and sort fields from ``.osrel``."""

    filename: str
    entry: bls.EntryName
    sort_key: str | None
    version: str | None

    @property
    def path(self) -> str:
        return f"{ENTRIES_DIR}/{self.filename}"


def candidate(filename: str, osrel: Mapping[str, str]) -> Candidate | None:
    """The entry for ``filename`` with ``osrel``; None for what systemd-boot skips."""
    try:
        entry = bls.parse(filename)
    except FormatError:
        return None
    if entry.suffix != ".efi":
        return None
    if not any(osrel.get(k) for k in ("PRETTY_NAME", "IMAGE_ID", "NAME", "ID")):
        return None
    sort_key = osrel.get("IMAGE_ID") or osrel.get("ID") or None
    version = osrel.get("IMAGE_VERSION") or osrel.get("VERSION_ID") or osrel.get("VERSION")
    return Candidate(filename, entry, sort_key, version or None)


def _cmp(x: Candidate, y: Candidate) -> int:
    a, b = x.entry, y.entry
    r = (a.left == 0) - (b.left == 0)
    if r:
        return r
    r = -((x.sort_key is not None) - (y.sort_key is not None))
    if r:
        return r
    if x.sort_key is not None and y.sort_key is not None:
        r = (x.sort_key > y.sort_key) - (x.sort_key < y.sort_key)
        if r:
            return r
        r = -version_compare(x.version or "", y.version or "")
        if r:
            return r
    r = -version_compare(a.name.lower(), b.name.lower())
    if r:
        return r
    if a.left is None or b.left is None:
        return 0
    r = -((a.left > b.left) - (a.left < b.left))
    if r:
        return r
    return ((a.done or 0) > (b.done or 0)) - ((a.done or 0) < (b.done or 0))


def order(candidates: list[Candidate]) -> list[Candidate]:
    """The entries in systemd-boot's menu order; the first is the default."""
    return sorted(candidates, key=functools.cmp_to_key(_cmp))


def booted_name(chosen: Candidate) -> str | None:
    """The name systemd-boot renames the entry to before it loads it (None: no rename)."""
    after = chosen.entry.booted()
    return None if after == chosen.entry else after.to_string()
