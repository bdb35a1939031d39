"""Preflight: may this device install this release into this slot? Pure decisions.

Checked before the target slot is touched, each failure its own error naming expected
vs actual: the product (RAUC ``compatible``) and the hardware id
(:class:`~bastion.errors.IncompatibleError`), the release's SVN against the fuse counter
(:class:`~bastion.errors.RollbackError`: the device would refuse to boot it) and the
fuse budget (bits left after the commit), the minimum base version against the
running version, the running slot committed (an install over a slot in trial would
leave no known-good fallback: :class:`~bastion.errors.ConflictError`), the sizes of
the target partitions and the room on the ESP for the new UKI entry
(:class:`~bastion.errors.LimitError`), and, when the release was picked from TUF, the
bundle matching the target the signed metadata named
(:class:`~bastion.errors.MixAndMatchError`).

ESP room (:class:`EspRoom`, gathered by :func:`esp_room` through the platform's ``Esp``):
the UKI takes whole clusters, and one cluster more is kept for the ``EFI/Linux`` folder
(a new long file name may need a new directory cluster); the target slot's old entries,
which the installer deletes first, count as free. A full ESP is refused here, before the
journal, the slot record or any partition byte is written.

The device's own identity and health checks come from ``update.json`` in the platform
store: ``{"product": ..., "hardware": ..., "channel": ..., "health": {...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bastion.device.platform.base import Platform
from bastion.device.platform.esp import EspSpace
from bastion.device.update.release import MAX_SVN, Release, parse_version
from bastion.device.update.slots import SlotRecord, SlotState, entries_of
from bastion.errors import (
    ConflictError,
    FormatError,
    IncompatibleError,
    LimitError,
    MixAndMatchError,
    NotFoundError,
    PolicyError,
    RollbackError,
)
from bastion.formats import strict_json

DEVICE_CONFIG = "update.json"


class TargetLike(Protocol):
    """What device/update/tuf_client.py's ReleaseTarget gives (h/tuf), read-only."""

    @property
    def path(self) -> str: ...
    @property
    def length(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def svn(self) -> int: ...
    @property
    def product(self) -> str: ...
    @property
    def hardware(self) -> tuple[str, ...]: ...
    @property
    def channel(self) -> str: ...
    @property
    def min_base_version(self) -> str | None: ...
    @property
    def custom(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    product: str
    hardware: str
    channel: str = "stable"
    health: Mapping[str, Any] = field(default_factory=dict)


def load_config(platform: Platform) -> DeviceConfig:
    raw = platform.load(DEVICE_CONFIG)
    if raw is None:
        raise NotFoundError(
            f"device has no {DEVICE_CONFIG} (product, hardware, channel): "
            "bastion update configure writes it"
        )
    doc = strict_json.loads_object(raw, what=DEVICE_CONFIG)
    product, hardware = doc.get("product"), doc.get("hardware")
    channel, health = doc.get("channel", "stable"), doc.get("health", {})
    if not all(isinstance(v, str) and v for v in (product, hardware, channel)):
        raise FormatError(f"{DEVICE_CONFIG}: product, hardware and channel must be strings")
    if not isinstance(health, dict):
        raise FormatError(f"{DEVICE_CONFIG}: health must be an object")
    return DeviceConfig(str(product), str(hardware), str(channel), health)


def save_config(platform: Platform, config: DeviceConfig) -> None:
    doc = {
        "product": config.product,
        "hardware": config.hardware,
        "channel": config.channel,
        "health": dict(config.health),
    }
    platform.store(DEVICE_CONFIG, json.dumps(doc, sort_keys=True).encode())


#: the bundle image that becomes the slot's UKI entry on the ESP
UKI_SLOTCLASS = "efi"


@dataclass(frozen=True, slots=True)
class EspRoom:
    """The ESP's free space, and what deleting the target slot's old entries frees."""

    space: EspSpace
    reclaimed: int
    slot: str


def esp_room(platform: Platform, slot: str) -> EspRoom:
    """The ESP's room for slot ``slot``'s new entry (its old entries counted as free)."""
    esp = platform.esp()
    space = esp.space()
    reclaimed = sum(space.allocated(esp.size(e.path)) for e in entries_of(esp, slot))
    return EspRoom(space, reclaimed, slot)


def check_esp_room(release: Release, room: EspRoom) -> None:
    """LimitError when the release's UKI does not fit the ESP (module docstring)."""
    uki = release.image(UKI_SLOTCLASS)
    if uki is None:
        return
    space = room.space
    need = space.allocated(uki.size) + space.cluster
    if need > space.free + room.reclaimed:
        raise LimitError(
            f"ESP has {space.free} bytes free and {room.reclaimed} from slot {room.slot}'s "
            f"old entries; the new UKI ({uki.size} bytes) needs {need} ({space.cluster}-byte "
            "clusters, one more for its directory entry)"
        )


@dataclass(frozen=True, slots=True)
class Preflight:
    """What the checks found: the notes a caller shows."""

    fuse_counter: int
    fuse_bits_left_after: int
    notes: tuple[str, ...]


def check(
    release: Release,
    *,
    config: DeviceConfig,
    running: SlotRecord | None,
    fuse_counter: int,
    partition_sizes: Mapping[str, int],
    bundle_size: int,
    esp: EspRoom,
    target: TargetLike | None = None,
) -> Preflight:
    """Raise on the first reason not to install; else the notes."""
    notes: list[str] = []
    if release.product != config.product:
        raise IncompatibleError(
            f"release is for product {release.product!r}, this device is {config.product!r}"
        )
    if config.hardware not in release.hardware:
        raise IncompatibleError(
            f"release {release.version} runs on hardware {', '.join(release.hardware)}; "
            f"this device is {config.hardware!r}"
        )
    if release.svn < fuse_counter:
        raise RollbackError(
            f"release {release.version} has security version {release.svn}, below the fuse "
            f"counter {fuse_counter}: the device would refuse to boot it"
        )
    left_after = MAX_SVN - max(release.svn, fuse_counter)
    if release.svn > fuse_counter:
        notes.append(
            f"commit will blow fuses {fuse_counter} -> {release.svn} ({left_after} bits left)"
        )
    if running is None:
        raise NotFoundError("the running slot has no record: the device state is unknown")
    if running.state != SlotState.COMMITTED:
        raise ConflictError(
            f"the running slot {running.slot} is {running.state}, not committed: commit or "
            "fall back before installing again"
        )
    if release.min_base_version is not None and parse_version(running.version) < parse_version(
        release.min_base_version
    ):
        raise PolicyError(
            f"release {release.version} installs over version {release.min_base_version} or "
            f"later; this device runs {running.version}"
        )
    if running.bundle and running.bundle == release.verity_hash:
        raise ConflictError(f"release {release.version} is the running slot's bundle already")
    for slotclass, size in partition_sizes.items():
        image = release.image(slotclass)
        if image is not None and image.size > size:
            raise LimitError(
                f"release image {slotclass} is {image.size} bytes; the slot partition holds {size}"
            )
    check_esp_room(release, esp)
    if target is not None:
        _match_target(release, target, bundle_size)
    return Preflight(fuse_counter, left_after, tuple(notes))


def _match_target(release: Release, target: TargetLike, bundle_size: int) -> None:
    """The bundle must be the one the signed TUF target describes (mix-and-match)."""
    pairs: list[tuple[str, object, object]] = [
        ("length", target.length, bundle_size),
        ("version", target.version, release.version),
        ("svn", target.svn, release.svn),
        ("product", target.product, release.product),
    ]
    # trust/tuf.py's release_custom: {"verity": {"hash": ...}, ...}
    verity = target.custom.get("verity") if target.custom else None
    if isinstance(verity, Mapping) and "hash" in verity:
        pairs.append(("verity hash", verity["hash"], release.verity_hash))
    for what, want, got in pairs:
        if want != got:
            raise MixAndMatchError(
                f"bundle does not match TUF target {target.path}: {what} is {got!r}, the "
                f"signed target says {want!r}"
            )
    if not set(target.hardware) <= set(release.hardware):
        raise MixAndMatchError(
            f"TUF target {target.path} names hardware {target.hardware}, the bundle "
            f"{release.hardware}"
        )
