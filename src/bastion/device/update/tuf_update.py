"""The device's TUF settings, the update check against them, and the target-bytes check.

``bastion update configure`` records where the device's releases come from
(:class:`TufSettings`: metadata URL, targets URL) in the platform store as
``update-tuf.json``, the trusted root as ``root.json`` in the device's TUF metadata
folder (ngclient keeps every later root there as it follows rotations), and the release
CA keyring as ``update-keyring.pem``. From these, :func:`open_client` builds the
:class:`~bastion.device.update.tuf_client.DeviceTufClient`.

:func:`check` refreshes the metadata (every TUF refusal raises its own error, see
tuf_client.py) and says what an install would do: the picked release, or, when none is
picked, why (:class:`UpdateCheck`): up to date, another product/hardware/channel, an SVN
below the fuses; each reason is :func:`bastion.trust.tuf.check_release`'s message.

:func:`verify_target_bytes` is the second, independent check of a TUF install (ADR 0030,
"TUF-picked installs"): the bundle's own signature and verity tree verify every block
before it is written (stream.py, install.py); before the new slot is activated, the
bytes of the bundle as the device installed them (the rootfs blocks from the slot just
written, every other byte read again from the source) must have the TUF target's
length and SHA-256. Either check failing stops the install with nothing activated.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bastion.device.platform.base import Platform
from bastion.device.update import preflight
from bastion.device.update.release import ROOTFS
from bastion.device.update.slots import SlotState, booted, load_records, other, root_partition
from bastion.device.update.stream import BLOCK, OpenedBundle, read_range
from bastion.device.update.tuf_client import DeviceTufClient, HttpFetcher, ReleaseTarget
from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    IncompatibleError,
    MixAndMatchError,
    NotFoundError,
    RollbackError,
)
from bastion.formats import strict_json
from bastion.io.files import atomic_write
from bastion.io.http import HttpClient
from bastion.limits import UPDATE_RANGE_MAX_SIZE
from bastion.tpm.base import Tpm
from bastion.trust.tuf import check_release

SETTINGS = "update-tuf.json"
KEYRING = "update-keyring.pem"
#: the folder, in the device's state, where ngclient keeps the trusted metadata
METADATA_DIR = "tuf-metadata"


@dataclass(frozen=True, slots=True)
class TufSettings:
    """Where this device reads its release metadata and bundles."""

    metadata_url: str
    targets_url: str

    def __post_init__(self) -> None:
        for what, url in (("metadata", self.metadata_url), ("targets", self.targets_url)):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"TUF {what} URL {url!r} must start with http:// or https://")


def save_settings(
    platform: Platform, metadata_dir: Path, settings: TufSettings, trusted_root: bytes
) -> None:
    """Record ``settings`` and start the trusted metadata over from ``trusted_root``."""
    root = strict_json.loads_object(trusted_root, what="trusted TUF root")
    signed = root.get("signed")
    if not isinstance(signed, dict) or signed.get("_type") != "root":
        raise FormatError("trusted TUF root: not a TUF root metadata file (signed._type)")
    metadata_dir.mkdir(parents=True, exist_ok=True)
    for old in metadata_dir.glob("*.json"):  # metadata trusted under another root
        old.unlink()
    atomic_write(metadata_dir / "root.json", trusted_root)
    platform.store(SETTINGS, json.dumps(asdict(settings), sort_keys=True).encode())


def load_settings(platform: Platform) -> TufSettings:
    raw = platform.load(SETTINGS)
    if raw is None:
        raise NotFoundError(
            f"device has no {SETTINGS}: bastion update configure --metadata-url URL "
            "--targets-url URL --tuf-root root.json records where its releases come from"
        )
    doc = strict_json.loads_object(raw, what=SETTINGS)
    urls = doc.get("metadata_url"), doc.get("targets_url")
    if not all(isinstance(u, str) and u for u in urls):
        raise FormatError(f"{SETTINGS}: metadata_url and targets_url must be strings")
    return TufSettings(str(urls[0]), str(urls[1]))


def open_client(
    platform: Platform, metadata_dir: Path, *, ca_file: str | None = None
) -> DeviceTufClient:
    """The TUF client for this device's settings (root.json from ``configure``);
    ``ca_file``: the TLS CA of an https:// repository."""
    settings = load_settings(platform)
    if not (metadata_dir / "root.json").is_file():
        raise NotFoundError(
            f"no trusted TUF root in {metadata_dir}: bastion update configure --tuf-root"
        )
    fetcher = HttpFetcher(HttpClient(settings.metadata_url, ca_file=ca_file))
    return DeviceTufClient(metadata_dir, settings.metadata_url, settings.targets_url, fetcher)


@dataclass(frozen=True, slots=True)
class UpdateCheck:
    """What the refreshed metadata offers this device."""

    product: str
    hardware: str
    channel: str
    running_version: str
    running_svn: int
    fuse_counter: int
    target: ReleaseTarget | None
    #: ``available``; ``awaiting-reboot`` (installed into the other slot, in trial); or,
    #: when nothing is picked, ``up-to-date``, ``no-release`` or ``not-suitable``
    status: str
    #: (release path, why this device does not take it), for every release not picked
    refused: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, object]:
        t = self.target
        return {
            "status": self.status,
            "product": self.product,
            "hardware": self.hardware,
            "channel": self.channel,
            "running": {"version": self.running_version, "svn": self.running_svn},
            "fuse_counter": self.fuse_counter,
            "target": None
            if t is None
            else {
                "path": t.path,
                "version": t.version,
                "svn": t.svn,
                "length": t.length,
                "sha256": t.sha256,
                "hardware": list(t.hardware),
            },
            "refused": [{"path": p, "reason": r} for p, r in self.refused],
        }


def check(platform: Platform, client: DeviceTufClient, tpm: Tpm | None = None) -> UpdateCheck:
    """Refresh TUF and pick this device's release, or say why there is none. ``tpm``:
    the device's open TPM where the platform keeps its fuses in TPM NV."""
    fuse_bank = platform.fuses(tpm)
    config = preflight.load_config(platform)
    boot = booted(platform)
    if boot is None:
        raise NotFoundError("the device has no record of the slot it booted")
    running = load_records(platform).get(boot.slot)
    if running is None:
        raise NotFoundError(f"the running slot {boot.slot} has no record")
    fuses = fuse_bank.counter()
    client.refresh()
    target = client.pick(config.product, config.hardware, config.channel, fuses, running.version)
    refused: list[tuple[str, str]] = []
    status = "available"
    pending = load_records(platform).get(other(boot.slot))
    if (
        target is not None
        and pending is not None
        and pending.state == SlotState.TRIAL
        and (pending.version, pending.svn) == (target.version, target.svn)
    ):
        status = "awaiting-reboot"
    if target is None:
        status = "no-release"
        for cand in client.candidates(config.product, config.channel):
            try:
                check_release(
                    cand,
                    product=config.product,
                    hardware=config.hardware,
                    channel=config.channel,
                    current_svn=fuses,
                    current_version=running.version,
                )
            except (IncompatibleError, RollbackError) as exc:
                refused.append((cand.path, str(exc)))
                if cand.version == running.version and cand.svn == running.svn:
                    status = "up-to-date"
                elif status != "up-to-date":
                    status = "not-suitable"
    return UpdateCheck(
        config.product,
        config.hardware,
        config.channel,
        running.version,
        running.svn,
        fuses,
        target,
        status,
        tuple(refused),
    )


def verify_target_bytes(
    platform: Platform,
    opened: OpenedBundle,
    slot: str,
    target: preflight.TargetLike,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Raise unless the installed bundle's bytes have ``target``'s length and SHA-256.

    The rootfs blocks come from the slot just written (the install wrote exactly the
    bundle's payload blocks there); every other byte is read again from the source.
    """
    source = opened.source
    size = source.size()
    if size != target.length:
        raise MixAndMatchError(
            f"bundle {source.name} is {size} bytes, TUF target {target.path} says {target.length}"
        )
    rootfs = opened.release.images[ROOTFS]
    start = rootfs.first_block * BLOCK
    end = start + rootfs.size
    digest = hashlib.sha256()
    digest.update(read_range(source, 0, start))
    part = platform.partition_storage(root_partition(slot))
    try:
        for off in range(0, rootfs.size, UPDATE_RANGE_MAX_SIZE):
            digest.update(part.read(off, min(UPDATE_RANGE_MAX_SIZE, rootfs.size - off)))
            if progress is not None:
                progress(off)
    finally:
        part.close()
    digest.update(read_range(source, end, size - end))
    actual = digest.hexdigest()
    if not hmac.compare_digest(actual, target.sha256):
        raise DigestMismatchError(
            f"bundle {source.name} as installed into slot {slot} has SHA-256 {actual}, the "
            f"signed TUF target {target.path} says {target.sha256} (arbitrary software); "
            "the slot was not activated",
            area="target",
        )
