"""Benchmark: bastion's LUKS2 data path and unlock against the reference tools, same run.

Usage: .venv/bin/python bench/luks2.py [--size-mib 256] [--runs 3] [--skip-unlock] [--dir DIR]

1. Throughput: a volume with 4096-byte sectors and SIZE MiB of data; bastion writes SIZE
   MiB of random plaintext and reads it back (``Luks2Volume.write``/``read``, page cache
   warm). The reference is ``openssl speed -elapsed -evp aes-256-xts -bytes 4096`` (the
   machine's AES-XTS ceiling on one core; this kernel has no crypto API for
   ``cryptsetup benchmark``). Ratio = bastion MB/s / openssl MB/s (target >= 0.25).
2. Unlock: ``cryptsetup luksFormat`` with its default argon2id costs (benchmarked by
   cryptsetup for 2000 ms, memory up to 1 GiB), then the median of ``cryptsetup open
   --test-passphrase`` against bastion's ``Luks2Volume.open`` + ``unlock_passphrase`` on
   the same volume (same Argon2 cost). Ratio = bastion / cryptsetup (target <= 1.1).

Other engineers' work runs on this machine: the load average is printed, and both sides
of each ratio are measured back to back in the same run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bastion.formats.luks2 import KdfType
from bastion.io.runner import require_tool
from bastion.storage.luks2_volume import FileRange, KdfSpec, Luks2Volume

MiB = 1 << 20


def openssl_xts_mbps(seconds: int = 3) -> float:
    out = subprocess.run(
        [
            require_tool("openssl"),
            "speed",
            "-elapsed",
            "-seconds",
            str(seconds),
            "-evp",
            "aes-256-xts",
            "-bytes",
            "4096",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"AES-256-XTS\s+([0-9.]+)k", out, re.IGNORECASE)
    if not match:
        raise SystemExit(f"cannot parse openssl speed output:\n{out}")
    return float(match.group(1)) * 1000 / 1e6


def throughput(folder: Path, size_mib: int, runs: int) -> None:
    img = folder / "tp.img"
    with open(img, "wb") as f:
        f.truncate(16 * MiB + size_mib * MiB)
    vol = Luks2Volume.format(
        FileRange(img), b"bench", kdf=KdfSpec(KdfType.PBKDF2, iterations=1000), sector_size=4096
    )
    data = os.urandom(size_mib * MiB)
    writes, reads, reads_into, refs = [], [], [], []
    reuse = bytearray(8 * MiB)
    for _ in range(runs):
        refs.append(openssl_xts_mbps())
        start = time.perf_counter()
        vol.write(0, data)
        writes.append(size_mib * MiB / 1e6 / (time.perf_counter() - start))
        start = time.perf_counter()
        back = vol.read(0, len(data))
        reads.append(size_mib * MiB / 1e6 / (time.perf_counter() - start))
        assert back == data
        del back
        start = time.perf_counter()
        for off in range(0, len(data), len(reuse)):
            vol.readinto(off, reuse)
        reads_into.append(size_mib * MiB / 1e6 / (time.perf_counter() - start))
        assert reuse == data[-len(reuse) :]
    ref = statistics.median(refs)
    w, r = statistics.median(writes), statistics.median(reads)
    ri = statistics.median(reads_into)
    print(
        f"data path, {size_mib} MiB, 4096-byte sectors, {runs} runs (median), "
        f"{vol._workers(size_mib * MiB)} process(es)"
    )
    print(f"  openssl speed aes-256-xts 4096 B : {ref:8.0f} MB/s   runs {[round(x) for x in refs]}")
    print(f"  bastion write                    : {w:8.0f} MB/s   ratio {w / ref:.2f}")
    print(f"  bastion read (new bytes)         : {r:8.0f} MB/s   ratio {r / ref:.2f}")
    print(f"  bastion readinto (8 MiB buffer)  : {ri:8.0f} MB/s   ratio {ri / ref:.2f}")
    img.unlink()


def unlock(folder: Path, runs: int) -> None:
    cryptsetup = require_tool("cryptsetup")
    img = folder / "unlock.img"
    with open(img, "wb") as f:
        f.truncate(20 * MiB)
    key = folder / "key"
    key.write_bytes(b"bench passphrase")
    start = time.perf_counter()
    subprocess.run(
        [
            cryptsetup,
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--key-file",
            str(key),
            str(img),
        ],
        check=True,
        capture_output=True,
    )
    print(
        f"unlock, cryptsetup default argon2id (luksFormat took {time.perf_counter() - start:.1f} s)"
    )
    vol = Luks2Volume.open(FileRange(img))
    kdf = vol.metadata.keyslots[0].kdf
    print(f"  keyslot 0 KDF: {kdf.to_json() | {'salt': '...'}}")
    ref, mine = [], []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [cryptsetup, "open", "--test-passphrase", "--key-file", str(key), str(img)],
            check=True,
            capture_output=True,
        )
        ref.append(time.perf_counter() - start)
        start = time.perf_counter()
        Luks2Volume.open(FileRange(img)).unlock_passphrase(b"bench passphrase")
        mine.append(time.perf_counter() - start)
    r, m = statistics.median(ref), statistics.median(mine)
    print(f"  cryptsetup open --test-passphrase: {r:6.2f} s   runs {[round(x, 2) for x in ref]}")
    print(f"  bastion unlock_passphrase        : {m:6.2f} s   runs {[round(x, 2) for x in mine]}")
    print(f"  ratio bastion/cryptsetup         : {m / r:.2f}")
    img.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-unlock", action="store_true")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()}, cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        throughput(Path(tmp), args.size_mib, args.runs)
        if not args.skip_unlock:
            unlock(Path(tmp), args.runs)
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
