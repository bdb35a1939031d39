"""Benchmark: full attestation verdicts per second per core, against ``tpm2_checkquote``.

One verdict = parse the evidence JSON, check the AK against the enrolled one, verify the
quote (ECDSA P-256, signature + nonce + PCR digest), parse and replay a 40-event log,
verify the signed golden values, compare PCRs and measured components, SVN floor, TPM
clock against the last accepted quote, and a posture policy (trust/verdict.py).
The log is a real EFI boot's: ``tests/vectors/boot/eventlog.bin``, the 40 events OVMF,
signed systemd-boot 252, systemd-stub 252 and Linux 6.1 measured in the QEMU guest of
tests/e2e (PCRs 0-7, 9, 11, 12); the quote covers the fleet default ``sha256:0,4,7,9,11``
and the golden values are that boot's PCRs and UKI components.
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
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.device.attest import build_evidence
from bastion.formats import eventlog as el
from bastion.formats.tpm2 import Alg, PcrsFile
from bastion.tpm.base import PcrSelection
from bastion.tpm.quote import public_pem
from bastion.tpm.software import SoftwareTpm
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

#: the fleet default selection (server attestation DEFAULT_SELECTION)
SEL = PcrSelection.parse("sha256:0,4,7,9,11")
#: a real EFI boot's event log (tests/vectors/boot/README.md says how it was made)
EVENT_LOG = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "boot" / "eventlog.bin"
NONCE = bytes(range(32))
POSTURE = {"selinux": "enforcing", "randomize_va_space": 2, "lockdown": "integrity",
           "secure_boot": True, "listening_ports": [22], "cmdline": "quiet"}  # fmt: skip
POLICY = PosturePolicy(
    require_selinux="enforcing", min_aslr=2, require_lockdown="integrity",
    require_secure_boot=True, allowed_ports=(22,), forbidden_cmdline=("init=",),
)  # fmt: skip


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per CPU second of ``fn`` over about ``seconds`` of CPU time: CPU time, not
    wall time, so the figure is per core and other work on a shared machine does not
    count against it (a process ``fn`` runs is counted once it has finished)."""
    fn()
    n, start = 0, cpu_seconds()
    while (elapsed := cpu_seconds() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def events() -> list[el.Event]:
    """The 40 events of a real OVMF + systemd-boot + UKI boot."""
    return list(el.parse(EVENT_LOG.read_bytes()).events)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    boot = events()
    product = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
    pcrs = el.replay(boot)
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
        # the one public-key operation a memoized verdict makes, alone: what this machine
        # gives right now (a verdict's cost in ECDSA verifies does not depend on the load)
        key = ec.generate_private_key(ec.SECP256R1())
        signature = key.sign(wire[:256], ec.ECDSA(hashes.SHA256()))
        public = key.public_key()
        ecdsa = rate(lambda: public.verify(signature, wire[:256], ec.ECDSA(hashes.SHA256())),
                     args.seconds)  # fmt: skip
        print(
            f"one ECDSA P-256 verify alone (cryptography): {ecdsa:,.0f}/s; a memoized verdict "
            f"costs {ecdsa / ours:,.1f} verifies"
        )

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
