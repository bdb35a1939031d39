"""Benchmark: full attestation verdicts per second per core, against ``tpm2_checkquote``.

One verdict = parse the evidence JSON, check the AK against the enrolled one, verify the
quote (ECDSA P-256, signature + nonce + PCR digest), parse and replay a 40-event log,
verify the signed golden values, compare PCRs and measured components, SVN floor, TPM
clock against the last accepted quote, and a posture policy (trust/verdict.py).
Target: >= 5,000 verdicts/s per core. Two figures: a fleet running one image (every
device's event log is byte-identical, so the verifier's memo of parsed logs and verified
golden statements hits) and the cold case (caches cleared before each verdict).
``tpm2_checkquote`` (one process per quote, as tools are used) checks only the quote
part of the same evidence, for a ratio.

Usage: .venv/bin/python bench/attest.py [--seconds S]
Other work on the machine makes absolute figures noisy; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bastion.device.attest import build_evidence
from bastion.formats import eventlog as el
from bastion.formats.tpm2 import Alg, PcrsFile
from bastion.tpm.quote import public_pem
from bastion.tpm.software import SoftwareTpm
from bastion.trust import measure
from bastion.trust.keys import KeyAlgorithm, generate_private_key
from bastion.trust.signer import SoftwareSigner, Verifier
from bastion.trust.verdict import (
    AttestationPolicy,
    GoldenValues,
    PosturePolicy,
    clear_caches,
    components_of,
    evidence_from_json,
    evidence_result,
    sign_golden,
)

SEL = measure.seal_selection()
NONCE = bytes(range(32))
POSTURE = {"selinux": "enforcing", "randomize_va_space": 2, "lockdown": "integrity",
           "secure_boot": True, "listening_ports": [22], "cmdline": "quiet"}  # fmt: skip
POLICY = PosturePolicy(
    require_selinux="enforcing", min_aslr=2, require_lockdown="integrity",
    require_secure_boot=True, allowed_ports=(22,), forbidden_cmdline=("init=",),
)  # fmt: skip


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def events() -> list[el.Event]:
    """A 40-event boot: firmware POST codes, then bastion's own chain."""
    sections = [(".linux", b"k" * 4096), (".osrel", b"ID=bastion\n"), (".cmdline", b"quiet"),
                (".initrd", b"i" * 4096), (".svn", b"3"), (".modcert", b"m"),
                (".veritycert", b"v")]  # fmt: skip
    firmware = [el.measure(0, el.EventType.EV_POST_CODE, f"post {i}".encode()) for i in range(18)]
    return firmware + measure.boot_events(b"\x11" * 32, b"loader", sections, b"\x22" * 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    boot = events()
    product = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
    pcrs = measure.predict(boot)
    comps, _ = components_of(boot)
    golden = sign_golden(
        GoldenValues("1.0", "ab" * 32, 3, {i: pcrs[i] for i in SEL.indexes}, comps), product
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tpm = SoftwareTpm(work / "state.json")
        for ev in boot:
            tpm.pcr_extend(ev.pcr, {SEL.bank: ev.digest(el.ALG_SHA256)})
        ak = tpm.create_ak()
        log = el.EventLog(el.SpecIdEvent(), tuple(boot)).to_bytes()
        evidence = build_evidence(tpm, ak, NONCE, SEL, log, POSTURE)
        wire = evidence.to_bytes()
        keys = [Verifier.of(product.public_key())]
        policy = AttestationPolicy(SEL, 2, POLICY)
        first = evidence_result(
            wire, nonce=NONCE, ak_public=ak.public, golden=[golden], product_keys=keys,
            policy=policy,
        )  # fmt: skip
        assert first.clock is not None, first.failures
        previous = first.clock

        def verdict() -> None:
            v = evidence_result(
                wire, nonce=NONCE, ak_public=ak.public, golden=[golden], product_keys=keys,
                policy=policy, previous=previous,
            )  # fmt: skip
            assert v.ok, v.failures

        def cold() -> None:
            clear_caches()  # every device's log distinct, golden signature checked again
            verdict()

        verdict()
        print(f"evidence: {len(boot)} events, {len(wire):,} bytes of JSON")
        ours = rate(verdict, args.seconds)
        print(
            f"full verdicts, fleet on one image (log and golden memoized): {ours:,.0f}/s "
            "per core (target >= 5,000/s)"
        )
        parsed = evidence_from_json(json.loads(wire))

        def decoded() -> None:
            v = evidence_result(
                parsed, nonce=NONCE, ak_public=ak.public, golden=[golden], product_keys=keys,
                policy=policy, previous=previous,
            )  # fmt: skip
            assert v.ok, v.failures

        server_path = rate(decoded, args.seconds)
        print(f"  the same, evidence already decoded (the server's path): {server_path:,.0f}/s")
        cold_rate = rate(cold, args.seconds)
        print(f"full verdicts, every log distinct, golden re-verified: {cold_rate:,.0f}/s per core")

        tool = shutil.which("tpm2_checkquote")
        if not tool:
            print("tpm2_checkquote not installed (Debian package tpm2-tools): no ratio")
            return
        (work / "quote.msg").write_bytes(evidence.quote)
        (work / "quote.sig").write_bytes(evidence.signature)
        (work / "ak.pem").write_bytes(public_pem(ak.public))
        values = PcrsFile.from_values(Alg.SHA256, dict(evidence.pcrs)).to_bytes()
        (work / "pcrs.bin").write_bytes(values)
        argv = [tool, "-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig", "-f", "pcrs.bin",
                "-g", "sha256", "-q", NONCE.hex()]  # fmt: skip

        def checkquote() -> None:
            subprocess.run(argv, cwd=work, check=True, capture_output=True)

        ref = rate(checkquote, args.seconds)
        print(f"tpm2_checkquote (quote only, one process per quote): {ref:,.1f}/s")
        print(
            f"ratio full verdicts / tpm2_checkquote: {ours / ref:,.1f}x (memoized), "
            f"{cold_rate / ref:,.1f}x (cold)"
        )


if __name__ == "__main__":
    main()
