"""Benchmark: pure quote verification and software-TPM seal+unseal, against the reference.

Prints, measured in this run on one core:
* ``verify_quote`` per second (ECDSA P-256 AK; target >= 2,000/s), and the same check
  done by ``tpm2_checkquote`` (one process per quote, as tools are used) for a ratio;
* SoftwareTpm seal+unseal pairs per second, and, when swtpm + tpm2-pytss are present,
  the same pairs through the tss backend on a private swtpm for a ratio.

Usage: .venv/bin/python bench/tpm.py [--seconds S]
Other work on the machine makes absolute figures noisy; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bastion.formats.tpm2 import Alg, PcrsFile
from bastion.tpm.base import HashAlg, PcrSelection, Tpm
from bastion.tpm.quote import _public_key_cached, public_pem, verify_quote
from bastion.tpm.software import SoftwareTpm

SEL = PcrSelection.parse("sha256:0,1,2,3,4,5,6,7")
NONCE = bytes.fromhex("00112233445566778899aabbccddeeff")


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def seal_unseal(tpm: Tpm) -> Callable[[], object]:
    def once() -> object:
        sealed = tpm.seal(b"k" * 32, SEL)
        return tpm.unseal(sealed, SEL)

    return once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tpm = SoftwareTpm(work / "state.json")
        for i in SEL.indexes:
            tpm.pcr_extend(i, {HashAlg.SHA256: hashlib.sha256(bytes([i])).digest()})
        ak = tpm.create_ak()
        q = tpm.quote(ak, NONCE, SEL)
        values = tpm.pcr_read(SEL)

        ours = rate(
            lambda: verify_quote(q.attest, q.signature, ak.public, NONCE, SEL, values),
            args.seconds,
        )
        print(f"verify_quote (ECDSA P-256, 8 PCRs): {ours:,.0f}/s per core (target >= 2,000/s)")

        def uncached() -> None:
            _public_key_cached.cache_clear()  # as if every quote came from a new AK
            verify_quote(q.attest, q.signature, ak.public, NONCE, SEL, values)

        cold = rate(uncached, args.seconds)
        print(f"verify_quote, AK key object rebuilt every call: {cold:,.0f}/s per core")

        tool = shutil.which("tpm2_checkquote")
        if tool:
            (work / "quote.msg").write_bytes(q.attest)
            (work / "quote.sig").write_bytes(q.signature)
            (work / "ak.pem").write_bytes(public_pem(ak.public))
            (work / "pcrs.bin").write_bytes(PcrsFile.from_values(Alg.SHA256, values).to_bytes())
            argv = [tool, "-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig", "-f", "pcrs.bin",
                    "-g", "sha256", "-q", NONCE.hex()]  # fmt: skip

            def checkquote() -> None:
                subprocess.run(argv, cwd=work, check=True, capture_output=True)

            ref = rate(checkquote, args.seconds)
            print(f"tpm2_checkquote (one process per quote): {ref:,.1f}/s")
            print(f"ratio verify_quote / tpm2_checkquote: {ours / ref:,.1f}x")
        else:
            print("tpm2_checkquote not installed (Debian package tpm2-tools): no ratio")

        soft = rate(seal_unseal(tpm), args.seconds)
        print(f"SoftwareTpm seal+unseal (sha256:0-7): {soft:,.0f} pairs/s")
        try:
            from bastion.tpm.swtpm import Swtpm
            from bastion.tpm.tss import TssTpm
        except ImportError:
            print("tpm2-pytss not installed: no swtpm comparison")
            return
        if not shutil.which("swtpm"):
            print("swtpm not installed: no swtpm comparison")
            return
        with Swtpm.start(work / "swtpm") as sw:
            tss = TssTpm(sw.uri)
            try:
                real = rate(seal_unseal(tss), args.seconds)
            finally:
                tss.close()
        print(f"TssTpm over swtpm seal+unseal: {real:,.0f} pairs/s")
        print(f"ratio SoftwareTpm / swtpm: {soft / real:,.1f}x")


if __name__ == "__main__":
    main()
