"""Benchmark: the sim kernel's initrd decompression (formats/compressed.py) against the
reference tools' ``-dc`` (``zstd``, ``xz``, ``gzip``), on the same stream.

The data is ``--mib`` MiB shaped like an initrd (a third random, as compressed firmware
and binaries are, the rest repetitive text); each kind is compressed once by its tool
(``zstd -19``, ``xz --check=crc32``, ``gzip -n``), then decompressed by bastion (bounded,
complete, in small input slices) and by the tool writing to a pipe that this script
reads, best of ``--runs`` wall-clock runs each. Prints MB/s and the ratio bastion / tool
(above 1: bastion is faster).

Usage: .venv/bin/python bench/decompress.py [--mib 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from bastion.formats import compressed

TOOLS = {
    "zstd": (["zstd", "-q", "-c", "-19", "-T0"], ["zstd", "-dc"]),
    "xz": (["xz", "--check=crc32", "-c", "-T0"], ["xz", "-dc"]),
    "gzip": (["gzip", "-n", "-c"], ["gzip", "-dc"]),
}


def best(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size = args.mib << 20
    text = b"usr/lib/modules/6.1.0/kernel/drivers/net/ethernet/intel/e1000e.ko\n" * (size // 100)
    data = (os.urandom(size // 3) + text)[:size]
    print(f"load average {os.getloadavg()[0]:.2f}; {args.mib} MiB of initrd-like data")
    failed = False
    for kind, (pack, unpack) in TOOLS.items():
        if shutil.which(pack[0]) is None:
            print(f"{kind}: {pack[0]} not installed: no figure")
            failed = True
            continue
        stream = subprocess.run(pack, input=data, capture_output=True, check=True).stdout
        assert compressed.decompress(stream, limit=size, what="bench") == data

        def ours(stream: bytes = stream) -> None:
            compressed.decompress(stream, limit=size, what="bench")

        def tool(stream: bytes = stream, unpack: list[str] = unpack) -> None:
            subprocess.run(unpack, input=stream, capture_output=True, check=True)

        t_ours, t_tool = best(ours, args.runs), best(tool, args.runs)
        mb = size / 1e6
        print(
            f"{kind:5s} stream {len(stream) / 1e6:6.1f} MB: bastion {mb / t_ours:7.1f} MB/s, "
            f"{unpack[0]} -dc {mb / t_tool:7.1f} MB/s, ratio {t_tool / t_ours:.2f}x"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
