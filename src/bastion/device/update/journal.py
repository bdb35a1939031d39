"""The install progress journal: where an interrupted install resumes.

One small JSON document in the platform store (``update-journal.json``), replaced
atomically and durably (temporary file, fsync, rename, fsync of the folder:
``Platform.store``) after the slot's written blocks were synced. It says which bundle
(its signed verity root hash) is going into which slot under which entry generation,
the stage, and how many rootfs blocks are written (the watermark).

The journal is a hint, never trusted: on resume every block below the watermark is
read back and checked against the bundle's signed digest (device/update/install.py),
and a block that does not match is written again, so a tampered or stale journal can
slow an install down but cannot put an unverified block into a slot. A journal that
does not parse, or names another bundle or slot, is set aside and the install starts
over (:func:`load` returns None and says why).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from bastion.device.platform.base import ConsoleKind, Platform
from bastion.errors import FormatError
from bastion.formats import strict_json
from bastion.formats.image import SLOTS
from bastion.limits import UPDATE_JOURNAL_MAX_SIZE

JOURNAL = "update-journal.json"


class Stage:
    STARTED = "started"  # the target slot is being made unbootable
    WRITING = "writing"  # rootfs blocks below ``done`` are (claimed) written
    ACTIVATING = "activating"  # every block written and synced; entry being written
    ALL = (STARTED, WRITING, ACTIVATING)


@dataclass(frozen=True, slots=True)
class Journal:
    bundle: str
    slot: str
    generation: int
    stage: str
    done: int = 0  # rootfs blocks claimed written
    downloaded: int = 0  # bytes read from the source over all runs of this install

    def advanced(self, **changes: object) -> Journal:
        return replace(self, **changes)  # type: ignore[arg-type]


def load(platform: Platform) -> Journal | None:
    """The journal, or None (absent or unreadable: the console says which)."""
    raw = platform.load(JOURNAL)
    if raw is None or raw.strip() == b"{}":
        return None
    try:
        if len(raw) > UPDATE_JOURNAL_MAX_SIZE:
            raise FormatError(f"{len(raw)} bytes (limit {UPDATE_JOURNAL_MAX_SIZE})")
        doc = strict_json.loads_object(raw, what=JOURNAL)
        journal = Journal(**doc)
        ints = (journal.generation, journal.done, journal.downloaded)
        if (
            not isinstance(journal.bundle, str)
            or journal.slot not in SLOTS
            or journal.stage not in Stage.ALL
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints)
        ):
            raise FormatError("a field is out of range")
    except (FormatError, TypeError) as exc:
        why = f"install journal ignored, it does not parse: {exc}"
        platform.console(ConsoleKind.WARNING, why)
        return None
    return journal


def save(platform: Platform, journal: Journal) -> None:
    platform.store(JOURNAL, json.dumps(asdict(journal), sort_keys=True).encode())


def clear(platform: Platform) -> None:
    """Mark no install in progress (an empty document: the store has no delete)."""
    platform.store(JOURNAL, b"{}")


def is_clear(platform: Platform) -> bool:
    raw = platform.load(JOURNAL)
    return raw is None or raw.strip() == b"{}"
