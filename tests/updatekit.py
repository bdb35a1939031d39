"""Helpers for update tests: a small sim device with two slots, releases, a TUF double,
and a power-cut harness (a Platform whose writes stop at write N).

The device is the real ``sim`` platform (device/platform/sim.py) over a small GPT disk
holding only the slot partitions; its ESP is ``DEV/esp/``. Releases are real bundles
made by build/bundle.py (mksquashfs), signed by a test release CA. Each release's verity
image is a real dm-verity hash tree of its rootfs (superblock, salt from its version) and
its UKI a small PE whose ``.cmdline`` names that tree's ``roothash=``, so an install gives
the filled slot the PARTUUIDs the Discoverable Partitions Specification derives from it
(install.slot_partition_uuids), and a check can find a slot's root the way the boot
chain does (trust/image.verify_efi_root).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bundlekit import ReleaseKeys, release_keys
from tests.conftest import need_tool
from tests.pebuild import make_pe

from bastion.build.bundle import BundleImage, build_bundle
from bastion.build.disk import build_esp
from bastion.device.platform.base import ConsoleKind, FuseBank, PartitionStorage
from bastion.device.platform.esp import Esp, EspSpace
from bastion.device.platform.sim import SimPlatform, create_sim_folder
from bastion.device.update import slots
from bastion.device.update.install import slot_partition_uuids
from bastion.device.update.preflight import DeviceConfig, save_config
from bastion.formats import gpt
from bastion.formats.uki import uki_root_hash
from bastion.formats.verity import VerityParams, VeritySuperblock, build_tree
from bastion.io.clock import Clock
from bastion.storage.disk_image import plan_partition_uuids as plan_gpt_rewrite
from bastion.storage.disk_image import pwrite_all
from bastion.tpm.fuses import FileFuseBank

BLOCK = 4096
KEYS: ReleaseKeys = release_keys("update")
PRODUCT = "bastion-edge"
HARDWARE = "board-x"


@dataclass(frozen=True)
class ReleaseFiles:
    """One release: its images and the bundle made from them."""

    version: str
    svn: int
    rootfs: bytes
    verity: bytes
    uki: bytes
    bundle: Path

    @property
    def uki_sha256(self) -> str:
        return hashlib.sha256(self.uki).hexdigest()

    @property
    def rootfs_sha256(self) -> str:
        return hashlib.sha256(self.rootfs).hexdigest()

    @property
    def root_hash(self) -> bytes | None:
        """The ``roothash=`` of this release's UKI (None: a UKI without one)."""
        return uki_root_hash(self.uki)


def verity_image(rootfs: bytes, version: str) -> tuple[bytes, bytes]:
    """A dm-verity hash image of ``rootfs`` (superblock at 0, as veritysetup formats a
    separate hash partition) and its root hash; salt and UUID derived from ``version``."""
    salt = hashlib.sha256(b"salt " + version.encode()).digest()
    params = VerityParams.for_data_size(len(rootfs), salt=salt)
    tree = build_tree(params, [rootfs])
    superblock = VeritySuperblock(params, gpt.derived_uuid("verity " + version, salt))
    return tree.hash_region(superblock, 0), tree.root_hash


def rootfs_blocks(seed: int, blocks: int) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(BLOCK) for _ in range(blocks)]


def make_release(
    folder: Path,
    version: str,
    svn: int,
    rootfs: bytes,
    *,
    keys: ReleaseKeys = KEYS,
    hardware: str = HARDWARE,
    product: str = PRODUCT,
    min_base: str | None = None,
    health: Mapping[str, Any] | None = None,
) -> ReleaseFiles:
    need_tool("mksquashfs")
    folder.mkdir(parents=True, exist_ok=True)
    verity, root_hash = verity_image(rootfs, version)
    cmdline = f"console=ttyS0 roothash={root_hash.hex()}".encode() + b"\0"
    kernel = hashlib.sha512(rootfs + version.encode()).digest() * 64
    uki = make_pe(((".cmdline", cmdline), (".linux", kernel)))
    (folder / f"rootfs-{version}.img").write_bytes(rootfs)
    (folder / f"verity-{version}.img").write_bytes(verity)
    (folder / f"uki-{version}.efi").write_bytes(uki)
    meta: list[tuple[str, str]] = [("product", product), ("svn", str(svn)), ("hardware", hardware)]
    if min_base:
        meta.append(("min-base-version", min_base))
    groups: list[tuple[str, tuple[tuple[str, str], ...]]] = [("bastion", tuple(meta))]
    if health is not None:
        spec = json.dumps(health, separators=(",", ":"))
        groups.append(("bastion-health", (("spec", spec),)))
    out = folder / f"release-{version}.raucb"
    build_bundle(
        out,
        [
            BundleImage("rootfs", folder / f"rootfs-{version}.img", "rootfs.img"),
            BundleImage("verity", folder / f"verity-{version}.img", "verity.img"),
            BundleImage("efi", folder / f"uki-{version}.efi", "uki.efi"),
        ],
        compatible=product,
        version=version,
        signer=keys.signer(),
        certificate=keys.cert,
        meta=groups,
    )
    return ReleaseFiles(version, svn, rootfs, verity, uki, out)


def _disk(path: Path, root_size: int, verity_size: int, esp: bytes = b"") -> None:
    parts = []
    lba = 2048
    seed = b"update-test"
    if esp:  # a FAT ESP first (the sim then reaches it with mtools, ImageEsp)
        sectors = len(esp) // gpt.SECTOR
        parts.append(
            gpt.Partition(
                gpt.TYPE_ESP, gpt.derived_uuid("esp", seed), lba, lba + sectors - 1, 0, "esp"
            )
        )
        lba += sectors
    for slot in ("a", "b"):
        for name, tguid, size in (
            (slots.root_partition(slot), gpt.TYPE_ROOT_X86_64, root_size),
            (slots.verity_partition(slot), gpt.TYPE_ROOT_VERITY_X86_64, verity_size),
        ):
            sectors = size // gpt.SECTOR
            parts.append(
                gpt.Partition(tguid, gpt.derived_uuid(name, seed), lba, lba + sectors - 1, 0, name)
            )
            lba += sectors
    disk = gpt.GptDisk(lba + 2048, gpt.derived_uuid("disk", seed), tuple(parts))
    with path.open("wb") as f:
        f.truncate(disk.size)
        f.write(disk.head_bytes())
        if esp:
            f.seek(parts[0].first_lba * gpt.SECTOR)
            f.write(esp)
        f.seek(disk.tail_offset)
        f.write(disk.tail_bytes())


def make_device(
    folder: Path,
    factory: ReleaseFiles,
    *,
    root_size: int = 256 * 1024,
    verity_size: int = 64 * 1024,
    health: Mapping[str, Any] | None = None,
    esp_size: int | None = None,
    fuses: str = "file",
    tpm: str = "software",
) -> SimPlatform:
    """A device running ``factory`` in slot a, committed, fuses at its SVN; its ESP the
    folder ``DEV/esp/``, or with ``esp_size`` a FAT partition of that size on the disk.
    ``fuses="tpm"``: the fuses are NV bits indexes of its TPM (``tpm``: software, the
    state DEV/tpm.state, or swtpm, DEV/swtpm/)."""
    plat = create_sim_folder(folder, tpm, fuses)
    esp = b""
    if esp_size is not None:
        need_tool("mkfs.vfat")
        build_esp(folder / "esp.fat", {}, size=esp_size)
        esp = (folder / "esp.fat").read_bytes()
        (folder / "esp.fat").unlink()
    _disk(plat.disk, root_size, verity_size, esp)
    plat.write_partition(slots.root_partition("a"), 0, factory.rootfs)
    plat.write_partition(slots.verity_partition("a"), 0, factory.verity)
    rec = slots.SlotRecord(
        slot="a",
        version=factory.version,
        svn=factory.svn,
        bundle="",
        uki_sha256=factory.uki_sha256,
        rootfs_sha256=factory.rootfs_sha256,
        rootfs_size=len(factory.rootfs),
        generation=1,
        state=slots.SlotState.COMMITTED,
    )
    slots.save_record(plat, rec)
    uuids = slot_partition_uuids(factory.uki, "a")
    if uuids is not None:  # the image build names slot a's partitions by its root hash
        plat.set_partition_uuids(uuids)
    plat.esp().write(f"{slots.ENTRY_DIR}/{rec.entry_stem}.efi", factory.uki)
    save_config(plat, DeviceConfig(PRODUCT, HARDWARE, "stable", dict(health or {})))
    if fuses == "tpm":
        with plat.power_on() as dev_tpm:  # the factory's first power-on
            plat.fuses(dev_tpm).blow_to(factory.svn)
            slots.firmware_boot(plat, dev_tpm)
        return plat
    FileFuseBank(folder / "fuses").blow_to(factory.svn)
    slots.firmware_boot(plat)
    return plat


def clone_device(template: Path, folder: Path) -> SimPlatform:
    shutil.copytree(template, folder)
    return SimPlatform(folder)


# --- TUF double ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeTarget:
    """A ReleaseTarget as h/tuf's client gives it."""

    path: str
    length: int
    sha256: str
    version: str
    svn: int
    product: str
    hardware: tuple[str, ...]
    channel: str
    min_base_version: str | None
    custom: Mapping[str, Any] = field(default_factory=dict)


class FakeTufClient:
    """DeviceTufClient's interface over a fixed list of targets and a base URL."""

    def __init__(self, targets: Sequence[FakeTarget], base_url: str) -> None:
        self.targets = list(targets)
        self.base_url = base_url.rstrip("/")
        self.refreshed = 0

    def refresh(self) -> None:
        self.refreshed += 1

    def pick(
        self,
        product: str,
        hardware: str,
        channel: str,
        current_svn: int,
        current_version: str,
    ) -> FakeTarget | None:
        fits = [
            t
            for t in self.targets
            if t.product == product
            and hardware in t.hardware
            and t.channel == channel
            and t.svn >= current_svn
            and t.version != current_version
        ]
        return max(fits, key=lambda t: t.svn, default=None)

    def target_url(self, target: FakeTarget) -> str:
        return f"{self.base_url}/{target.path}"


def target_for(release: ReleaseFiles, **changes: Any) -> FakeTarget:
    data = release.bundle.read_bytes()
    fields: dict[str, Any] = {
        "path": release.bundle.name,
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "version": release.version,
        "svn": release.svn,
        "product": PRODUCT,
        "hardware": (HARDWARE,),
        "channel": "stable",
        "min_base_version": None,
        "custom": {},
    }
    fields.update(changes)
    return FakeTarget(**fields)


# --- power cuts ---------------------------------------------------------------------------


class PowerCut(BaseException):
    """The power went: nothing after this write happens (BaseException: no handler in
    the code under test may catch it)."""


class Cutter:
    """Counts durable writes; raises PowerCut at write ``cut_at`` (0: never)."""

    def __init__(self, cut_at: int = 0, seed: int = 0, torn_sectors: int | None = None) -> None:
        self.cut_at = cut_at
        self.writes = 0
        #: the numbers of the writes that were GPT copies (a PARTUUID rewrite)
        self.gpt_points: list[int] = []
        #: sectors of a torn GPT copy that reach the disk (None: a random count)
        self.torn_sectors = torn_sectors
        self.rnd = random.Random(seed)

    def tick(self) -> bool:
        """True when this write is the one the power goes at."""
        self.writes += 1
        return self.writes == self.cut_at


class _CutStorage:
    def __init__(self, inner: PartitionStorage, cutter: Cutter) -> None:
        self._inner = inner
        self._cutter = cutter

    @property
    def size(self) -> int:
        return self._inner.size

    def read(self, offset: int, length: int) -> bytes:
        return self._inner.read(offset, length)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self._cutter.tick():
            # a torn write: some whole sectors of it reach the disk, then the power goes
            sectors = len(data) // 512
            keep = self._cutter.rnd.randint(0, sectors) * 512
            if keep:
                self._inner.write(offset, bytes(data[:keep]))
            raise PowerCut(f"cut in a partition write at {offset}")
        self._inner.write(offset, data)

    def sync(self) -> None:
        self._inner.sync()

    def close(self) -> None:
        self._inner.close()


class _CutEsp:
    def __init__(self, inner: Esp, cutter: Cutter) -> None:
        self._inner = inner
        self._cutter = cutter

    def list(self, folder: str) -> list[str]:
        return self._inner.list(folder)

    def read(self, path: str, limit: int = 256 * 1024 * 1024) -> bytes:
        return self._inner.read(path, limit)

    def write(self, path: str, data: bytes) -> None:
        if self._cutter.tick():
            raise PowerCut(f"cut before ESP write of {path}")
        self._inner.write(path, data)

    def rename(self, old: str, new: str) -> None:
        if self._cutter.tick():
            raise PowerCut(f"cut before ESP rename {old}")
        self._inner.rename(old, new)

    def remove(self, path: str) -> None:
        if self._cutter.tick():
            raise PowerCut(f"cut before ESP remove {path}")
        self._inner.remove(path)

    def size(self, path: str) -> int:
        return self._inner.size(path)

    def space(self) -> EspSpace:
        return self._inner.space()


class _CutFuses:
    def __init__(self, inner: FuseBank, cutter: Cutter) -> None:
        self._inner = inner
        self._cutter = cutter

    def key_hash(self) -> bytes | None:
        return self._inner.key_hash()

    def burn_key_hash(self, key_hash: bytes) -> None:
        if self._cutter.tick():
            raise PowerCut("cut before a fuse burn")
        self._inner.burn_key_hash(key_hash)

    def counter(self) -> int:
        return self._inner.counter()

    def blow_to(self, value: int) -> None:
        if self._cutter.tick():
            raise PowerCut("cut before a fuse blow")
        self._inner.blow_to(value)


class CutPlatform:
    """A sim platform whose every durable write (partition, ESP, fuses, store, and each
    GPT copy a PARTUUID rewrite writes) counts towards a power cut."""

    def __init__(self, inner: SimPlatform, cutter: Cutter) -> None:
        self.inner = inner
        self.cutter = cutter
        self.console_lines: list[tuple[ConsoleKind, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def clock(self) -> Clock:
        return self.inner.clock

    def partition_storage(self, name: str) -> PartitionStorage:
        return _CutStorage(self.inner.partition_storage(name), self.cutter)

    def write_partition(self, name: str, offset: int, data: bytes) -> None:
        if self.cutter.tick():
            raise PowerCut("cut before a partition write")
        self.inner.write_partition(name, offset, data)

    def set_partition_uuids(self, uuids: Mapping[str, uuid.UUID]) -> None:
        """storage/disk_image.set_partition_uuids with each GPT copy's write a cut point:
        its plan (which copies, in which order) written copy by copy, synced after each;
        the write the power goes at is torn like a partition write (a prefix of whole
        sectors reaches the disk)."""
        plan = plan_gpt_rewrite(self.inner.disk, uuids)
        fd = os.open(self.inner.disk, os.O_RDWR)
        try:
            for offset, data in plan.writes:
                self.cutter.gpt_points.append(self.cutter.writes + 1)
                if self.cutter.tick():
                    sectors = len(data) // gpt.SECTOR
                    if self.cutter.torn_sectors is None:
                        keep = self.cutter.rnd.randint(0, sectors) * gpt.SECTOR
                    else:
                        keep = min(self.cutter.torn_sectors, sectors) * gpt.SECTOR
                    if keep:
                        pwrite_all(fd, data[:keep], offset)
                    raise PowerCut(f"cut in the GPT copy write at {offset} ({keep} bytes written)")
                pwrite_all(fd, data, offset)
                os.fsync(fd)
        finally:
            os.close(fd)

    def esp(self) -> Esp:
        return _CutEsp(self.inner.esp(), self.cutter)

    def fuses(self, tpm: Any = None) -> FuseBank:
        return _CutFuses(self.inner.fuses(tpm), self.cutter)

    def store(self, name: str, data: bytes) -> None:
        if self.cutter.tick():
            raise PowerCut(f"cut before storing {name}")
        self.inner.store(name, data)

    def load(self, name: str) -> bytes | None:
        return self.inner.load(name)

    def console(self, kind: ConsoleKind, message: str) -> None:
        self.console_lines.append((kind, message))


def entry_names(plat: SimPlatform) -> list[str]:
    """The file names in the ESP's ``EFI/Linux``."""
    return plat.esp().list(slots.ENTRY_DIR)


# --- a loopback HTTP server with Range support --------------------------------------------


class RangeServer:
    """Serves files of one folder over loopback HTTP with single Range requests.

    ``fail_after`` (bytes of body sent over all requests) makes the server drop the
    connection mid-answer once that many bytes went out: a dropped link.
    """

    def __init__(self, folder: Path) -> None:
        import http.server
        import threading

        self.folder = folder
        self.sent = 0
        self.fail_after: int | None = None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return

            def do_GET(self) -> None:
                path = owner.folder / self.path.lstrip("/")
                if "/" in self.path.lstrip("/") or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                header = self.headers.get("Range", "")
                if not header.startswith("bytes="):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                lo_text, _, hi_text = header[6:].partition("-")
                lo, hi = int(lo_text), min(int(hi_text), len(data) - 1)
                body = data[lo : hi + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.fail_after is not None and owner.sent + len(body) > owner.fail_after:
                    cut = max(0, owner.fail_after - owner.sent)
                    self.wfile.write(body[:cut])
                    owner.sent += cut
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)
                owner.sent += len(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
