"""Install a verified bundle into the inactive slot, resumable, downloading only what is new.

Order (each write durable before the next, ADR 0030; a power cut after any of them
leaves a device that boots a signed slot, tests/integration/test_update_powercut.py):

1. open the bundle: signature, manifest, verity tree (device/update/stream.py); read
   the release it describes; preflight (device/update/preflight.py);
2. journal ``started`` (device/update/journal.py), then the target slot's record set
   to ``installing`` and its old boot entries removed: from here the firmware cannot
   choose the target slot, whatever its partitions hold;
3. the rootfs image, block by block: every block of the target partition and of the
   running slot is hashed with the bundle's salt (device/update/delta.py); a block
   already in place is kept, one found elsewhere is copied, the rest is downloaded in
   Range requests; every block is checked against its signed digest *before* it is
   written; the partition is synced and the journal's watermark advanced every
   :data:`JOURNAL_EVERY` bytes;
4. the verity hash image (if the bundle has one) into the slot's verity partition,
   the same way but without reuse (it is small);
5. the UKI, read and checked the same way (and against its signed SHA-256); the slot's
   root and verity partitions get the PARTUUIDs its ``roothash=`` gives (both GPT
   copies, as systemd-sysupdate does; the boot chain finds the root by them); then the
   UKI is written to the ESP as ``EFI/Linux/bastion-<generation>-<slot>+3-0.efi`` (a
   fresh counter);
   when TUF picked the release, the bundle as installed must first have the signed
   target's length and SHA-256 (device/update/tuf_update.py; ADR 0030);
6. the record flipped to ``trial`` (the pointer: only now can the firmware choose the
   new entry), the journal cleared. The next boot tries the new slot; commit or
   fallback follow (device/update/commit.py).

A resumed install (same bundle, same slot in the journal) redoes steps 2-6; step 3
keeps every block already in place after checking it, so it downloads only what the
interrupted run had not written. A tampered journal changes nothing but the count of
blocks re-checked (``journal_mismatches``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from cryptography import x509

from bastion.device.platform.base import ConsoleKind, PartitionStorage, Platform
from bastion.device.update import health, journal, preflight
from bastion.device.update.delta import BLOCK, BlockIndex, build_index
from bastion.device.update.release import EFI, ROOTFS, VERITY, ImageRange
from bastion.device.update.slots import (
    ENTRY_DIR,
    TRIES,
    SlotRecord,
    SlotState,
    booted,
    entries,
    entries_of,
    load_records,
    other,
    root_partition,
    save_record,
    update_record,
    verity_partition,
)
from bastion.device.update.stream import BundleSource, HttpSource, OpenedBundle, open_bundle
from bastion.device.update.tuf_update import verify_target_bytes
from bastion.errors import ConfigError, DigestMismatchError, LimitError, NotFoundError
from bastion.formats import bls, gpt
from bastion.formats.uki import uki_root_hash
from bastion.limits import ESP_FILE_MAX_SIZE, UPDATE_RANGE_MAX_SIZE, MiB
from bastion.tpm.base import Tpm

#: sync the slot and advance the journal after this many bytes of rootfs
JOURNAL_EVERY = 64 * MiB
_SEGMENT = UPDATE_RANGE_MAX_SIZE // BLOCK  # blocks planned and written together
RESULT = "update-result.json"

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What an install did, for the CLI, the bench and the report."""

    slot: str
    version: str
    svn: int
    entry: str
    bundle: str
    bundle_size: int
    bytes_downloaded: int
    rootfs_blocks: int
    blocks_in_place: int
    blocks_copied: int
    blocks_downloaded: int
    journal_mismatches: int
    resumed: bool
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Counts:
    in_place: int = 0
    copied: int = 0
    downloaded: int = 0
    mismatches: int = 0


def _next_generation(platform: Platform) -> int:
    gens = [e.generation for e in entries(platform.esp())]
    gens += [r.generation for r in load_records(platform).values()]
    return max(gens, default=0) + 1


def _write_rootfs(
    platform: Platform,
    *,
    opened: OpenedBundle,
    image: ImageRange,
    slot: str,
    running: SlotRecord,
    state: journal.Journal,
    base: int,
    counts: _Counts,
    progress: Progress | None,
    segment: int,
    journal_every: int,
    delta: bool,
    resumed: bool,
) -> journal.Journal:
    hasher = opened.hasher()
    nblocks = image.size // BLOCK
    first = image.first_block
    target = platform.partition_storage(root_partition(slot))
    source_slot: PartitionStorage | None = None
    try:
        source_slot = platform.partition_storage(root_partition(running.slot))
        running_length = running.rootfs_size or source_slot.size
        if delta:
            index = build_index(target, image.size, source_slot, running_length, hasher)
        elif resumed:  # what an interrupted run wrote is still checked and kept
            index = build_index(target, image.size, None, 0, hasher)
        else:  # a plain install: every block is downloaded, nothing local is read
            index = BlockIndex(in_place=[b""] * nblocks)
        stores = (target, source_slot)
        wants = opened.digests[first : first + nblocks]
        counts.mismatches += sum(
            1 for k in range(min(state.done, nblocks)) if index.in_place[k] != wants[k]
        )
        since_sync = 0
        for seg in range(0, nblocks, segment):
            end = min(seg + segment, nblocks)
            blocks: dict[int, bytes] = {}
            missing: list[int] = []
            for k in range(seg, end):
                want = wants[k]
                if index.in_place[k] == want:
                    counts.in_place += 1
                    continue
                loc = index.find(want)
                if loc is not None:
                    data = stores[loc.source].read(loc.offset, BLOCK)
                    if opened.check(first + k, data, hasher):
                        blocks[k] = data
                        counts.copied += 1
                        continue
                missing.append(k)
            if not blocks and len(missing) == end - seg:
                # nothing local: the verified download is written as it came
                target.write(seg * BLOCK, opened.fetch(first + seg, end - seg))
                counts.downloaded += end - seg
                since_sync += (end - seg) * BLOCK
                missing = []
            for run_start, run_len in _runs(missing, segment):
                data = opened.fetch(first + run_start, run_len)
                for i in range(run_len):
                    blocks[run_start + i] = data[i * BLOCK : (i + 1) * BLOCK]
                counts.downloaded += run_len
            for run_start, run_len in _runs(sorted(blocks), segment):
                target.write(
                    run_start * BLOCK,
                    b"".join(blocks[run_start + i] for i in range(run_len)),
                )
                since_sync += run_len * BLOCK
            if since_sync >= journal_every or end == nblocks:
                target.sync()
                since_sync = 0
                state = state.advanced(
                    stage=journal.Stage.WRITING,
                    done=end,
                    downloaded=base + opened.source.bytes_read,
                )
                journal.save(platform, state)
            if progress is not None:
                progress(end, nblocks)
    finally:
        target.close()
        if source_slot is not None:
            source_slot.close()
    return state


def _runs(indices: Sequence[int], segment: int) -> list[tuple[int, int]]:
    """Consecutive runs in sorted ``indices`` as (start, length), each at most one read."""
    out: list[tuple[int, int]] = []
    for k in indices:
        if out and out[-1][0] + out[-1][1] == k and out[-1][1] < segment:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((k, 1))
    return out


def read_image(
    opened: OpenedBundle,
    image: ImageRange,
    sink: Callable[[int, bytes], None],
    segment: int = _SEGMENT,
) -> None:
    """Stream one image's bytes to ``sink(offset_in_image, data)``, each payload block
    checked before any of its bytes reach the sink."""
    block = image.first_block
    end = image.end_block
    while block < end:
        count = min(segment, end - block)
        data = opened.fetch(block, count)
        lo = max(image.offset, block * BLOCK)
        hi = min(image.offset + image.size, (block + count) * BLOCK)
        sink(lo - image.offset, data[lo - block * BLOCK : hi - block * BLOCK])
        block += count


def _write_plain(
    platform: Platform, opened: OpenedBundle, image: ImageRange, part: str, segment: int
) -> None:
    storage = platform.partition_storage(part)
    try:
        if image.size > storage.size:
            raise LimitError(
                f"image {image.slotclass} is {image.size} bytes, {part} holds {storage.size}"
            )
        read_image(opened, image, storage.write, segment)
        storage.sync()
    finally:
        storage.close()


def _read_uki(opened: OpenedBundle, image: ImageRange, segment: int) -> bytes:
    if image.size > ESP_FILE_MAX_SIZE:
        raise LimitError(f"bundle UKI is {image.size} bytes (limit {ESP_FILE_MAX_SIZE})")
    parts: list[bytes] = []
    read_image(opened, image, lambda _off, data: parts.append(data), segment)
    uki = b"".join(parts)
    actual = hashlib.sha256(uki).hexdigest()
    if not hmac.compare_digest(actual, image.sha256):
        raise DigestMismatchError(
            f"bundle UKI SHA-256 is {actual}, the signed manifest says {image.sha256}"
        )
    return uki


def slot_partition_uuids(uki: bytes, slot: str) -> dict[str, uuid.UUID] | None:
    """The PARTUUIDs the slot's root and verity partitions need so that the UKI's
    ``roothash=`` finds them (Discoverable Partitions Specification, as the boot chain,
    systemd and the test initrd look them up); None when ``uki`` is no UKI carrying a
    ``roothash=`` (such a payload boots through no bastion chain)."""
    root_hash = uki_root_hash(uki)
    if root_hash is None:
        return None
    root_uuid, verity_uuid = gpt.verity_partition_uuids(root_hash)
    return {root_partition(slot): root_uuid, verity_partition(slot): verity_uuid}


def write_result(platform: Platform, **doc: object) -> None:
    platform.store(RESULT, json.dumps(doc, sort_keys=True, default=str).encode())


def install(
    platform: Platform,
    source: BundleSource,
    keyring: Sequence[x509.Certificate],
    *,
    target: preflight.TargetLike | None = None,
    config: preflight.DeviceConfig | None = None,
    now: dt.datetime | None = None,
    progress: Progress | None = None,
    chunk: int = UPDATE_RANGE_MAX_SIZE,
    journal_every: int = JOURNAL_EVERY,
    delta: bool = True,
    tpm: Tpm | None = None,
) -> InstallResult:
    """Install the bundle at ``source`` into the slot that is not running (see module).

    ``chunk`` bytes are read (and written) at a time; the journal advances every
    ``journal_every`` bytes of rootfs. ``delta=False`` reads no local block (except,
    on a resume, the target's own): every rootfs block is downloaded, as for a first
    install or a device whose link is cheaper than its flash reads. ``tpm`` is the
    device's open TPM, needed where the platform keeps its fuses in TPM NV (ConfigError
    without it, before anything is written)."""
    if not BLOCK <= chunk <= UPDATE_RANGE_MAX_SIZE or chunk % BLOCK:
        raise ConfigError(f"chunk {chunk} must be whole 4 KiB blocks up to {UPDATE_RANGE_MAX_SIZE}")
    segment = chunk // BLOCK
    fuses = platform.fuses(tpm)
    opened = open_bundle(source, keyring, now=now)
    release = opened.release
    config = config or preflight.load_config(platform)
    boot = booted(platform)
    if boot is None:
        raise NotFoundError("the device has no record of the slot it booted")
    records = load_records(platform)
    running = records.get(boot.slot)
    slot = other(boot.slot)
    sizes = {}
    for cls, part in ((ROOTFS, root_partition(slot)), (VERITY, verity_partition(slot))):
        st = platform.partition_storage(part)
        sizes[cls] = st.size
        st.close()
    pre = preflight.check(
        release,
        config=config,
        running=running,
        fuse_counter=fuses.counter(),
        partition_sizes=sizes,
        bundle_size=source.size(),
        esp=preflight.esp_room(platform, slot),
        target=target,
    )
    assert running is not None
    health.parse_spec(release.health)  # a malformed release health spec is refused now
    previous = journal.load(platform)
    resumed = previous is not None and previous.bundle == opened.bundle_id and previous.slot == slot
    if resumed:
        assert previous is not None
        state = previous
        platform.console(ConsoleKind.NOTE, f"update: resuming install into slot {slot}")
    else:
        state = journal.Journal(
            opened.bundle_id, slot, _next_generation(platform), journal.Stage.STARTED
        )
        journal.save(platform, state)
    rootfs = release.images[ROOTFS]
    efi = release.images[EFI]
    record = SlotRecord(
        slot=slot,
        version=release.version,
        svn=release.svn,
        bundle=opened.bundle_id,
        uki_sha256=efi.sha256,
        rootfs_sha256=rootfs.sha256,
        rootfs_size=rootfs.size,
        generation=state.generation,
        state=SlotState.INSTALLING,
    )
    save_record(platform, record)
    platform.store(f"update-health-{slot}.json", (release.health or "{}").encode())
    esp = platform.esp()
    for old in entries_of(esp, slot):
        esp.remove(old.path)
    counts = _Counts()
    base = state.downloaded if resumed else 0  # bytes earlier runs of this install read
    state = _write_rootfs(
        platform,
        opened=opened,
        image=rootfs,
        slot=slot,
        running=running,
        state=state,
        base=base,
        counts=counts,
        progress=progress,
        segment=segment,
        journal_every=journal_every,
        delta=delta,
        resumed=resumed,
    )
    verity_image = release.image(VERITY)
    if verity_image is not None:
        _write_plain(platform, opened, verity_image, verity_partition(slot), segment)
    uki = _read_uki(opened, efi, segment)
    if target is not None:  # TUF's length and SHA-256, besides the bundle's own checks
        verify_target_bytes(platform, opened, slot, target)
    state = state.advanced(stage=journal.Stage.ACTIVATING, downloaded=base + source.bytes_read)
    journal.save(platform, state)
    uuids = slot_partition_uuids(uki, slot)
    if uuids is not None:
        platform.set_partition_uuids(uuids)
    name = bls.EntryName(record.entry_stem, ".efi", TRIES, 0)
    esp.write(f"{ENTRY_DIR}/{name.to_string()}", uki)
    update_record(platform, slot, state=SlotState.TRIAL, reason="")
    journal.clear(platform)
    write_result(
        platform,
        result="installed",
        slot=slot,
        version=release.version,
        svn=release.svn,
        bundle=opened.bundle_id,
        reason="",
        reported=False,
    )
    return InstallResult(
        slot=slot,
        version=release.version,
        svn=release.svn,
        entry=name.to_string(),
        bundle=opened.bundle_id,
        bundle_size=source.size(),
        bytes_downloaded=state.downloaded,
        rootfs_blocks=rootfs.size // BLOCK,
        blocks_in_place=counts.in_place,
        blocks_copied=counts.copied,
        blocks_downloaded=counts.downloaded,
        journal_mismatches=counts.mismatches,
        resumed=resumed,
        notes=pre.notes,
    )


class TufClient(Protocol):
    """What device/update/tuf_client.py's DeviceTufClient gives (h/tuf)."""

    def refresh(self) -> None: ...

    def pick(
        self,
        product: str,
        hardware: str,
        channel: str,
        current_svn: int,
        current_version: str,
    ) -> preflight.TargetLike | None: ...

    def target_url(self, target: preflight.TargetLike) -> str: ...


def check_update(
    platform: Platform,
    client: TufClient,
    config: preflight.DeviceConfig | None = None,
    tpm: Tpm | None = None,
) -> preflight.TargetLike | None:
    """Refresh the TUF metadata and pick the release for this device (None: up to date);
    ``tpm`` as for :func:`install`."""
    fuses = platform.fuses(tpm)
    config = config or preflight.load_config(platform)
    boot = booted(platform)
    if boot is None:
        raise NotFoundError("the device has no record of the slot it booted")
    running = load_records(platform).get(boot.slot)
    if running is None:
        raise NotFoundError(f"the running slot {boot.slot} has no record")
    client.refresh()
    return client.pick(
        config.product,
        config.hardware,
        config.channel,
        fuses.counter(),
        running.version,
    )


def install_from_tuf(
    platform: Platform,
    client: TufClient,
    keyring: Sequence[x509.Certificate],
    *,
    ca_file: str | None = None,
    now: dt.datetime | None = None,
    progress: Progress | None = None,
    tpm: Tpm | None = None,
) -> InstallResult | None:
    """:func:`check_update`, then install the picked target from its URL (Range)."""
    target = check_update(platform, client, tpm=tpm)
    if target is None:
        return None
    source = HttpSource(client.target_url(target), ca_file=ca_file)
    try:
        return install(
            platform, source, keyring, target=target, now=now, progress=progress, tpm=tpm
        )
    finally:
        source.close()
