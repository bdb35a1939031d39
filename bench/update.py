"""Benchmark: verified streaming install into a slot, and the adaptive delta's download.

Usage: .venv/bin/python bench/update.py [--size-mib 512] [--delta-mib 256] [--runs 3] [--dir DIR]

1. **Install**: a bundle whose rootfs is SIZE MiB of random data (nothing on the device
   can be reused). bastion: ``install(delta=False)`` from the bundle file into slot b
   of a sim device (signature, tree, every block checked before it is written, the slot
   synced, the UKI written to the ESP). Reference, same bundle, same run: ``rauc
   extract --keyring`` (RAUC checks the verity tree over the whole payload in user
   space, then unsquashfs) plus copying the extracted rootfs into a slot file and
   syncing it. Prints both wall times and the ratio bastion/reference (goal <= 1.0),
   and the time of the default install, which also reads and hashes both slots to
   look for reusable blocks (here it finds none: the cost of the delta index).
2. **Delta**: an erofs root of DELTA MiB of files (mkfs.erofs, build/fs.py), then the
   same tree with one 256 KiB file changed, rebuilt; the device runs the first and
   installs the second. Prints the bytes bastion read from the bundle against the
   bundle's size (goal <= 5%).

Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.build.bundle import BundleImage, build_bundle
from bastion.build.fs import FsType, build_filesystem
from bastion.device.platform.sim import SimPlatform, create_sim_folder
from bastion.device.update import install, slots, stream
from bastion.device.update.preflight import DeviceConfig, save_config
from bastion.formats import gpt
from bastion.io.runner import require_tool
from bastion.tpm.fuses import FileFuseBank
from bastion.trust.signer import SoftwareSigner

MiB = 1024 * 1024
NOW = dt.datetime.now(dt.UTC)


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey],
    ca: bool,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer[1], hashes.SHA256())
    )


class Keys:
    def __init__(self, folder: Path) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _cert("bench CA", ca_key, ("bench CA", ca_key), True)
        self.cert = _cert("bench signer", self.key, ("bench CA", ca_key), False)
        self.ca_pem = folder / "ca.pem"
        self.ca_pem.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def bundle(self, out: Path, rootfs: Path, uki: Path, version: str, svn: int) -> Path:
        build_bundle(
            out,
            [BundleImage("rootfs", rootfs, "rootfs.img"), BundleImage("efi", uki, "uki.efi")],
            compatible="bench",
            version=version,
            signer=SoftwareSigner(self.key),
            certificate=self.cert,
            meta=[("bastion", (("svn", str(svn)), ("hardware", "bench-board")))],
        )
        return out


def _device(folder: Path, rootfs: Path, uki: bytes, slot_size: int) -> SimPlatform:
    """A sim device running ``rootfs`` in slot a (committed)."""
    plat = create_sim_folder(folder, "software", "file")
    parts, lba = [], 2048
    for slot in ("a", "b"):
        for name, tguid, size in (
            (slots.root_partition(slot), gpt.TYPE_ROOT_X86_64, slot_size),
            (slots.verity_partition(slot), gpt.TYPE_ROOT_VERITY_X86_64, MiB),
        ):
            sectors = size // gpt.SECTOR
            parts.append(gpt.Partition(tguid, uuid.uuid4(), lba, lba + sectors - 1, 0, name))
            lba += sectors
    disk = gpt.GptDisk(lba + 2048, uuid.uuid4(), tuple(parts))
    with plat.disk.open("wb") as f:
        f.truncate(disk.size)
        f.write(disk.head_bytes())
        f.seek(disk.tail_offset)
        f.write(disk.tail_bytes())
    size = rootfs.stat().st_size
    with rootfs.open("rb") as src, plat.partition_storage(slots.root_partition("a")) as dst:
        for off in range(0, size, 4 * MiB):
            dst.write(off, src.read(4 * MiB))
    import hashlib

    rec = slots.SlotRecord(
        "a", "1.0", 1, "", hashlib.sha256(uki).hexdigest(), "", size, 1, "committed"
    )
    slots.save_record(plat, rec)
    plat.esp().write(f"{slots.ENTRY_DIR}/{rec.entry_stem}.efi", uki)
    FileFuseBank(folder / "fuses").blow_to(1)
    save_config(plat, DeviceConfig("bench", "bench-board"))
    slots.firmware_boot(plat)
    return plat


def _random_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))


def _ours(
    work: Path,
    name: str,
    old: Path,
    uki: bytes,
    size: int,
    bundle: Path,
    keys: Keys,
    *,
    delta: bool,
) -> float:
    dev = _device(work / name, old, uki, size)
    os.sync()
    start = time.perf_counter()
    src = stream.FileSource(bundle)
    result = install.install(dev, src, [keys.ca], delta=delta)
    took = time.perf_counter() - start
    src.close()
    assert result.blocks_downloaded == size // 4096, result
    shutil.rmtree(work / name)
    return took


def _reference(work: Path, bundle: Path, keys: Keys) -> float:
    """rauc extract (verifies the whole payload, unsquashfs) + write the rootfs to a slot."""
    out = work / "extract"
    slot_file = work / "slot-b.img"
    slot_file.write_bytes(b"")
    os.sync()
    start = time.perf_counter()
    subprocess.run(
        [require_tool("rauc"), "extract", "--keyring", str(keys.ca_pem), str(bundle), str(out)],
        check=True,
        capture_output=True,
    )
    with (out / "rootfs.img").open("rb") as s, slot_file.open("r+b") as d:
        shutil.copyfileobj(s, d, 4 * MiB)
        d.flush()
        os.fsync(d.fileno())
    took = time.perf_counter() - start
    shutil.rmtree(out)
    slot_file.unlink()
    return took


def bench_install(work: Path, keys: Keys, size_mib: int, runs: int) -> float:
    size = size_mib * MiB
    uki = work / "uki.efi"
    uki.write_bytes(b"MZ" + os.urandom(256 * 1024))
    old, new = work / "old.img", work / "new.img"
    _random_file(old, size)
    _random_file(new, size)
    bundle = keys.bundle(work / "new.raucb", new, uki, "2.0", 2)
    refs, plains, indexed = [], [], []
    for _ in range(runs):  # interleaved, medians: other work on the machine is noise
        refs.append(_reference(work, bundle, keys))
        plains.append(_ours(work, "dev1", old, uki.read_bytes(), size, bundle, keys, delta=False))
        indexed.append(_ours(work, "dev2", old, uki.read_bytes(), size, bundle, keys, delta=True))
    ref, plain, with_index = (statistics.median(x) for x in (refs, plains, indexed))
    ratio = plain / ref
    print(
        f"verified install of {size_mib} MiB (every block downloaded), median of {runs}: "
        f"bastion {plain:.2f} s, "
        f"rauc extract + write {ref:.2f} s, ratio {ratio:.2f} (goal <= 1.0)"
    )
    print(
        f"same, with the adaptive-delta index (both slots read and hashed, nothing found): "
        f"bastion {with_index:.2f} s, ratio {with_index / ref:.2f}"
    )
    return ratio


def bench_delta(work: Path, keys: Keys, size_mib: int) -> float:
    tree = work / "tree"
    (tree / "usr" / "lib").mkdir(parents=True)
    files = max(1, size_mib // 4)
    for i in range(files):
        _random_file(tree / "usr" / "lib" / f"lib{i:04d}.so", min(4 * MiB, size_mib * MiB))
    _random_file(tree / "usr" / "lib" / "app.bin", 256 * 1024)
    fs_uuid = uuid.UUID(int=7)
    a_img, b_img = work / "a.erofs", work / "b.erofs"
    build_filesystem(tree, a_img, FsType.EROFS, fs_uuid=fs_uuid, epoch=1)
    _random_file(tree / "usr" / "lib" / "app.bin", 256 * 1024)  # the one changed file
    build_filesystem(tree, b_img, FsType.EROFS, fs_uuid=fs_uuid, epoch=1)
    for img in (a_img, b_img):  # a verity data device is whole 4 KiB blocks
        with img.open("ab") as f:
            f.truncate(-(-img.stat().st_size // 4096) * 4096)
    uki = work / "uki.efi"
    uki.write_bytes(b"MZ" + os.urandom(256 * 1024))
    bundle = keys.bundle(work / "b.raucb", b_img, uki, "2.0", 2)
    slot = -(-max(a_img.stat().st_size, b_img.stat().st_size) // MiB) * MiB
    dev = _device(work / "dev", a_img, uki.read_bytes(), slot)
    src = stream.FileSource(bundle)
    result = install.install(dev, src, [keys.ca])
    src.close()
    share = result.bytes_downloaded / result.bundle_size
    print(
        f"delta, one 256 KiB file changed in a {size_mib} MiB erofs root: "
        f"{result.bytes_downloaded} of {result.bundle_size} bundle bytes read "
        f"({result.blocks_downloaded} blocks downloaded, {result.blocks_copied} reused), "
        f"ratio {share:.4f} = {share * 100:.2f}% (goal <= 5%)"
    )
    return share


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--delta-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-update-", dir=args.dir) as tmp:
        work = Path(tmp)
        keys = Keys(work)
        (work / "i").mkdir()
        (work / "d").mkdir()
        ratio = bench_install(work / "i", keys, args.size_mib, args.runs)
        shutil.rmtree(work / "i")
        share = bench_delta(work / "d", keys, args.delta_mib)
    ok = ratio <= 1.0 and share <= 0.05
    print(f"load average {os.getloadavg()[0]:.2f}; goals {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
