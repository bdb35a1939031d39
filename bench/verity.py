"""Benchmark: bastion dm-verity format and verify against veritysetup, same data, same run.

Usage: .venv/bin/python bench/verity.py [--size-mib 1024] [--runs 3] [--dir DIR]

Writes SIZE MiB of random data, then, in each run, times ``veritysetup format`` and
``verify`` next to bastion's ``bastion verity format`` and ``verify`` (the CLI: a fresh
Python process each time, so interpreter start-up is included) and the library calls
(``format_region``/``verify_region`` in this process, whose forked workers hash). Prints
the median wall time and CPU time (user + sys, workers included) of each, and the
ratios bastion/veritysetup (target: wall <= 0.6x). The trees are compared byte for
byte. Other work on the machine makes wall figures noisy (the load average is printed);
the CPU ratio shows the cost per byte independent of that, and the ratio of the fastest
runs shows what the least disturbed runs achieved.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bastion.formats.verity import VerityParams
from bastion.io.runner import require_tool
from bastion.storage.verity_reader import default_workers, format_region, verify_region

SALT = bytes(range(32))
UUID = uuid.UUID("a60c98d2-ae9b-4865-bfcb-b4e3ace11033")


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(func: Callable[[], str]) -> tuple[float, float, str]:
    cpu, start = _cpu(), time.perf_counter()
    out = func()
    return time.perf_counter() - start, _cpu() - cpu, out


def _cmd(argv: list[str]) -> Callable[[], str]:
    return lambda: subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _lib_format(data: Path, hash_file: Path, params: VerityParams) -> str:
    return format_region(data, hash_file, params, uuid=UUID).root_hash.hex()


def _lib_verify(data: Path, hash_file: Path, root: str) -> str:
    return str(verify_region(data, hash_file, bytes.fromhex(root)))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    vs = require_tool("veritysetup")
    bastion = str(Path(sys.executable).with_name("bastion"))
    with tempfile.TemporaryDirectory(prefix="bench-verity-", dir=args.dir) as tmp:
        work = Path(tmp)
        data = work / "data.img"
        with open(data, "wb") as f:
            for _ in range(args.size_mib // 64):
                f.write(os.urandom(64 << 20))
            f.write(os.urandom((args.size_mib % 64) << 20))
        blocks = data.stat().st_size // 4096
        params = VerityParams(data_blocks=blocks, salt=SALT)
        common = ["--salt", SALT.hex(), "--uuid", str(UUID)]
        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        loads: list[float] = []

        def record(key: str, func: Callable[[], str]) -> str:
            w, c, out = _measure(func)
            wall.setdefault(key, []).append(w)
            cpu.setdefault(key, []).append(c)
            return out

        for _ in range(args.runs):
            loads.append(os.getloadavg()[0])
            for name in ("ref.hash", "cli.hash", "lib.hash"):
                (work / name).unlink(missing_ok=True)
            out = record(
                "veritysetup format",
                _cmd([vs, "format", str(data), str(work / "ref.hash"), *common]),
            )
            match = re.search(r"Root hash:\s*([0-9a-f]+)", out)
            assert match, out
            root = match.group(1)
            record(
                "bastion cli format",
                _cmd([bastion, "verity", "format", str(data), str(work / "cli.hash"), *common]),
            )
            record(
                "bastion lib format",
                partial(_lib_format, data, work / "lib.hash", params),
            )
            record(
                "veritysetup verify", _cmd([vs, "verify", str(data), str(work / "ref.hash"), root])
            )
            record(
                "bastion cli verify",
                _cmd([bastion, "verity", "verify", str(data), str(work / "ref.hash"), root]),
            )
            record(
                "bastion lib verify",
                partial(_lib_verify, data, work / "ref.hash", root),
            )
        ref = (work / "ref.hash").read_bytes()
        identical = (work / "cli.hash").read_bytes() == ref == (work / "lib.hash").read_bytes()
        med_w = {k: statistics.median(v) for k, v in wall.items()}
        med_c = {k: statistics.median(v) for k, v in cpu.items()}
        print(
            f"data: {args.size_mib} MiB random, {blocks} blocks of 4096 B, sha256, "
            f"{args.runs} runs, {default_workers()} bastion workers, "
            f"load average {min(loads):.1f}..{max(loads):.1f} on {os.cpu_count()} CPUs"
        )
        for key, values in wall.items():
            runs = " ".join(f"{x:.3f}" for x in values)
            print(
                f"  {key:<19} wall median {med_w[key]:.3f} s  cpu {med_c[key]:.3f} s  runs: {runs}"
            )
        print(f"hash trees byte-identical: {'yes' if identical else 'NO'}")
        for op in ("format", "verify"):
            base_w, base_c = med_w[f"veritysetup {op}"], med_c[f"veritysetup {op}"]
            print(
                f"ratio {op}: wall cli {med_w[f'bastion cli {op}'] / base_w:.2f}x, "
                f"lib {med_w[f'bastion lib {op}'] / base_w:.2f}x (target <= 0.60x); "
                f"cpu cli {med_c[f'bastion cli {op}'] / base_c:.2f}x, "
                f"lib {med_c[f'bastion lib {op}'] / base_c:.2f}x"
            )
            best = min(wall[f"veritysetup {op}"])
            print(
                f"  fastest runs {op}: wall cli {min(wall[f'bastion cli {op}']) / best:.2f}x, "
                f"lib {min(wall[f'bastion lib {op}']) / best:.2f}x (least disturbed by other load)"
            )
        return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
