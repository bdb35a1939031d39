"""Benchmark: the tss backend against tpm2-tools on the same private swtpm, same run.

For each operation, the median wall time per operation of bastion's ``TssTpm`` (one
process, a new storage primary per call, everything flushed after each call) and of
the tpm2-tools commands a script would run for the same thing (one process per
command, flushing after each as swtpm without a resource manager needs):

* PCR extend:       ``TssTpm.pcr_extend``  vs ``tpm2_pcrextend``
* quote:            ``TssTpm.quote``       vs ``tpm2_quote`` (AK context prepared once)
* seal + unseal:    ``TssTpm.seal/unseal`` vs ``tpm2_createprimary, tpm2_createpolicy,
                    tpm2_create, tpm2_load, tpm2_unseal`` (+ ``tpm2_flushcontext``)

Prints the ratio tools/bastion (> 1 means bastion is faster). Other work on the
machine makes absolute figures noisy (the load average is printed).

Usage: .venv/bin/python bench/tpm_tss.py [--runs 20]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bastion.io.runner import CommandRunner
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.tpm.swtpm import Swtpm
from bastion.tpm.tss import TssTpm

SEL = PcrSelection.parse("sha256:0,7,23")
SRK_ATTRS = "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth"


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Swtpm.start(Path(tmp) / "swtpm") as sw:
        d = Path(tmp)
        run = CommandRunner(env={"TPM2TOOLS_TCTI": sw.uri, "TSS2_LOG": "all+none"}).run

        def flush() -> None:
            for flag in ("-t", "-l", "-s"):
                run(["tpm2_flushcontext", flag])

        digest = hashlib.sha256(b"bench").hexdigest()

        # --- tpm2-tools (bastion's connection closed: swtpm serves one client) -----
        run(["tpm2_createek", "-c", str(d / "ek.ctx"), "-G", "rsa", "-u", str(d / "ek.pub")])
        run(["tpm2_createak", "-C", str(d / "ek.ctx"), "-c", str(d / "ak.ctx"), "-G", "ecc",
             "-g", "sha256", "-s", "ecdsa", "-u", str(d / "ak.pub")])  # fmt: skip
        flush()

        def tools_extend() -> None:
            run(["tpm2_pcrextend", f"23:sha256={digest}"])

        def tools_quote() -> None:
            run(["tpm2_quote", "-c", str(d / "ak.ctx"), "-l", str(SEL), "-q", "abcd",
                 "-m", str(d / "q.msg"), "-s", str(d / "q.sig"), "-g", "sha256"])  # fmt: skip
            flush()

        def tools_seal_unseal() -> None:
            run(["tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "ecc256:aes128cfb",
                 "-a", SRK_ATTRS, "-c", str(d / "srk.ctx"), "-Q"])  # fmt: skip
            flush()
            run(["tpm2_createpolicy", "--policy-pcr", "-l", str(SEL), "-L", str(d / "pol")])
            flush()
            run(["tpm2_create", "-C", str(d / "srk.ctx"), "-L", str(d / "pol"), "-i", "-",
                 "-u", str(d / "s.pub"), "-r", str(d / "s.priv"), "-a", "fixedtpm|fixedparent",
                 "-Q"], input=b"secret")  # fmt: skip
            flush()
            run(["tpm2_load", "-C", str(d / "srk.ctx"), "-u", str(d / "s.pub"),
                 "-r", str(d / "s.priv"), "-c", str(d / "s.ctx"), "-Q"])  # fmt: skip
            flush()
            out = run(["tpm2_unseal", "-c", str(d / "s.ctx"), "-p", f"pcr:{SEL}"]).stdout
            flush()
            assert out == b"secret"

        tools = {
            "pcr extend": median_time(tools_extend, args.runs),
            "quote": median_time(tools_quote, args.runs),
            "seal+unseal": median_time(tools_seal_unseal, max(3, args.runs // 4)),
        }

        # --- bastion --------------------------------------------------------------------
        tpm = TssTpm(sw.uri)
        try:
            ak = tpm.create_ak()
            raw = bytes.fromhex(digest)
            ours = {
                "pcr extend": median_time(
                    lambda: tpm.pcr_extend(23, {HashAlg.SHA256: raw}), args.runs
                ),
                "quote": median_time(lambda: tpm.quote(ak, b"\xab\xcd", SEL), args.runs),
                "seal+unseal": median_time(
                    lambda: tpm.unseal(tpm.seal(b"secret", SEL), SEL), args.runs
                ),
            }
        finally:
            tpm.close()

    print(f"load average: {os.getloadavg()[0]:.1f} (2 cores; figures are noisy)")
    print(f"{'operation':<14}{'bastion tss':>14}{'tpm2-tools':>14}{'tools/bastion':>15}")
    for name, ours_s in ours.items():
        ratio = tools[name] / ours_s
        print(f"{name:<14}{ours_s * 1e3:>11.2f} ms{tools[name] * 1e3:>11.2f} ms{ratio:>14.1f}x")


if __name__ == "__main__":
    main()
