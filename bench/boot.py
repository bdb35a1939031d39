"""Benchmark: sim boot of the real disk (ESP, signed UKI, verity root) to running, with a
64 MiB and a 1 GiB root; lazy vs full verity.

Usage: .venv/bin/python bench/boot.py [--small-mib 64] [--large-mib 1024] [--runs 3] [--dir DIR]

For each root size: builds the product disk ``image build`` makes (erofs root holding
SIZE MiB of pseudo-random data, signed systemd-boot and UKI from systemd-boot-efi, a
generated Secure Boot key set), creates a sim device (software TPM, PK/KEK/db enrolled),
does the first boot (data volume created under the signed PCR 11 policy; not timed), then
times in-process EFI boots (firmware -> systemd-boot -> stub -> initrd -> running; median
of ``--runs``) with lazy verity and with ``full_verify``. Each boot blesses its entry, so
timed boots are steady-state boots of a blessed entry.

The reference for the full verification is ``veritysetup verify`` over the same root and
hash partitions (extracted to files), timed in the same run: the part of a boot the
reference tool can do (it has no firmware, loader or TPM). Prints both lazy times and
their ratio (target: large / small <= 1.2, because lazy verity reads only what mounting
reads), and the full-verify boot time with its ratio to veritysetup. Other work on the
machine makes wall figures noisy: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from bastion.build.efi_image import EfiImageKeys, build_efi_image
from bastion.build.fs import FsType
from bastion.build.image import ImageSpec
from bastion.device.boot.efi_chain import EfiBootChain
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.io.runner import require_tool
from bastion.storage import disk_image as di
from bastion.trust.signer import SoftwareSigner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.simefikit import INITRD, KERNEL, sb_keys


def _tree(folder: Path, mib: int) -> Path:
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / "os-release").write_text("ID=bastion\n")
    data = folder / "usr" / "data"
    data.mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    for i in range(max(1, mib - 8) // 64 + 1):
        with open(data / f"blob{i:03d}", "wb") as handle:
            for j in range(min(64, max(1, mib - 8) - i * 64)):
                handle.write(chunk[j:] + chunk[:j])
    return folder


def _median(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_size(base: Path, mib: int, runs: int) -> dict[str, float]:
    work = base / f"root{mib}"
    work.mkdir()
    t0 = time.perf_counter()
    spec = ImageSpec(
        rootfs=_tree(work / "tree", mib),
        kernel=KERNEL,
        initrd=INITRD,
        version="1",
        security_version=1,
        fs=FsType.EROFS,
        data_size=32 * 1024 * 1024,
    )
    keys = sb_keys()
    image_key = SoftwareSigner(ed25519.Ed25519PrivateKey.generate())
    built = build_efi_image(spec, EfiImageKeys(image_key, keys.db, keys.pcr), work / "disk.img")
    build_s = time.perf_counter() - t0
    dev = work / "dev"
    create_efi_device(dev, built.path, keys.variables())

    def boot(full: bool = False) -> None:
        EfiBootChain(SimPlatform(dev), full_verify=full).run()

    boot()  # first boot: data volume created (not timed)
    lazy = _median(boot, runs)
    full = _median(lambda: boot(True), runs)
    layout = built.layout
    root, verity = layout.find("root-a"), layout.find("root-a-verity")
    (work / "root.img").write_bytes(di.read_partition(built.path, root))
    (work / "hash.img").write_bytes(di.read_partition(built.path, verity))
    veritysetup = require_tool("veritysetup")
    ref = _median(
        lambda: subprocess.run(
            [veritysetup, "verify", str(work / "root.img"), str(work / "hash.img"),
             built.root_hash.hex()],
            check=True, capture_output=True,
        ),
        runs,
    )  # fmt: skip
    return {"build": build_s, "lazy": lazy, "full": full, "veritysetup": ref}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small-mib", type=int, default=64)
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bastion-bench-boot-") as tmp:
        base = Path(tmp)
        small = bench_size(base, args.small_mib, args.runs)
        large = bench_size(base, args.large_mib, args.runs)
    print(f"load average: {os.getloadavg()}")
    for name, r, mib in (("small", small, args.small_mib), ("large", large, args.large_mib)):
        print(
            f"{name:5} root {mib:>5} MiB: build {r['build']:.2f} s, boot (lazy) {r['lazy']:.3f} s, "
            f"boot --full-verify {r['full']:.3f} s, veritysetup verify {r['veritysetup']:.3f} s"
        )
    ratio = large["lazy"] / small["lazy"]
    print(f"lazy boot ratio large/small: {ratio:.2f} (target <= 1.2)")
    print(
        f"full-verify boot of the large root vs veritysetup verify: "
        f"{large['full'] / large['veritysetup']:.2f}x (includes the rest of the boot)"
    )
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
