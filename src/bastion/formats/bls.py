"""Boot Loader Specification entry file names with boot counting. Pure.

A BLS entry is a type #1 ``.conf`` file in ``/loader/entries/`` or a type #2 ``.efi``
(a UKI) in ``/EFI/Linux/``. Its file name may carry a boot counter (UAPI "Automatic Boot
Assessment"): ``NAME+LEFT.efi`` or ``NAME+LEFT-DONE.efi``, where LEFT is the number of
tries left and DONE the number of tries made, both decimal. A name without a counter
is not being assessed.

The rules, as systemd-boot and systemd-bless-boot apply them by renaming the file:

* **boot** (:meth:`EntryName.booted`): systemd-boot, about to boot an entry with
  LEFT > 0, renames it to ``NAME+(LEFT-1)-(DONE+1)``. An entry with LEFT = 0 is "bad":
  it is sorted after all others and booted unchanged only when nothing else is left.
  An entry without a counter is never renamed.
* **good** (:meth:`EntryName.blessed`): systemd-bless-boot, once the system is up and
  healthy, drops the counter: ``NAME``.
* **bad** (:meth:`EntryName.marked_bad`): ``NAME+0-DONE``.

Only the part after the *last* ``+`` of the stem is a counter, and only if it is
``digits`` or ``digits-digits``; otherwise the ``+`` belongs to the name (as in
``linux-6.1+deb12``). A name whose tail would read as a counter is refused when
building a name without one, so that :func:`parse` of :meth:`EntryName.to_string` is
the identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from bastion.errors import FormatError, LimitError
from bastion.limits import BLS_MAX_COUNTER, BLS_MAX_NAME_SIZE

SUFFIXES = (".conf", ".efi")
_COUNTER = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_DIGITS_MAX = len(str(BLS_MAX_COUNTER))


def _counter_value(text: str, what: str) -> int:
    if len(text) > _DIGITS_MAX or int(text) > BLS_MAX_COUNTER:
        raise LimitError(f"boot counter {what} {text} over {BLS_MAX_COUNTER}")
    return int(text)


@dataclass(frozen=True, slots=True)
class EntryName:
    """A parsed entry file name: ``name`` + optional counter + ``suffix``."""

    name: str
    suffix: str = ".efi"
    left: int | None = None
    done: int | None = None

    def __post_init__(self) -> None:
        if self.suffix not in SUFFIXES:
            raise FormatError(f"BLS entry suffix {self.suffix!r}: expected .conf or .efi")
        if not self.name or any(c in self.name for c in "/\\\0") or self.name.startswith("."):
            raise FormatError(f"BLS entry name {self.name!r} is empty or has a path character")
        if not self.name.isprintable() or self.name != self.name.strip():
            raise FormatError(f"BLS entry name {self.name!r} has a control or edge blank")
        try:
            size = len(self.name.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise FormatError(f"BLS entry name {self.name!r} is not valid Unicode") from exc
        if size > BLS_MAX_NAME_SIZE:
            raise LimitError(f"BLS entry name of {size} bytes (limit {BLS_MAX_NAME_SIZE})")
        if self.left is None and self.done is not None:
            raise FormatError("a boot counter with tries done needs tries left")
        for what, value in (("left", self.left), ("done", self.done)):
            if value is not None and not 0 <= value <= BLS_MAX_COUNTER:
                raise LimitError(f"boot counter {what} {value} out of 0..{BLS_MAX_COUNTER}")
        if "+" in self.name and _COUNTER.fullmatch(self.name.rsplit("+", 1)[1]):
            raise FormatError(f"BLS entry name {self.name!r} ends in what reads as a counter")

    @property
    def counting(self) -> bool:
        """True while the entry is being assessed (it has a counter)."""
        return self.left is not None

    @property
    def bad(self) -> bool:
        """True when the entry has no tries left (sorted last, booted only as fallback)."""
        return self.left == 0

    def to_string(self) -> str:
        """The file name."""
        if self.left is None:
            return self.name + self.suffix
        done = "" if self.done is None else f"-{self.done}"
        return f"{self.name}+{self.left}{done}{self.suffix}"

    def booted(self) -> EntryName:
        """The name systemd-boot renames the entry to when it boots it."""
        if self.left is None or self.left == 0:
            return self
        return replace(self, left=self.left - 1, done=min((self.done or 0) + 1, BLS_MAX_COUNTER))

    def blessed(self) -> EntryName:
        """The name after systemd-bless-boot ``good``: the counter is dropped."""
        return replace(self, left=None, done=None)

    def marked_bad(self) -> EntryName:
        """The name after systemd-bless-boot ``bad``: no tries left, tries done kept."""
        return replace(self, left=0, done=self.done if self.done is not None else 0)


def parse(filename: str) -> EntryName:
    """Parse an entry file name (FormatError for anything that is not one)."""
    if len(filename.encode("utf-8", "surrogatepass")) > BLS_MAX_NAME_SIZE + 32:
        raise LimitError(f"BLS entry file name of {len(filename)} characters")
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            break
    else:
        raise FormatError(f"{filename!r} is not a BLS entry (.conf or .efi)")
    if "+" in stem:
        name, tail = stem.rsplit("+", 1)
        match = _COUNTER.fullmatch(tail)
        if match:
            left = _counter_value(match.group(1), "left")
            done = None if match.group(2) is None else _counter_value(match.group(2), "done")
            return EntryName(name, suffix, left, done)
    return EntryName(stem, suffix)
