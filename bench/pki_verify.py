"""Benchmark: device chain + CRL validation, bastion against `openssl verify`, same run.

Usage: .venv/bin/python bench/pki_verify.py [--certs 50] [--runs 3]

Builds a root CA, a fleet CA, N device certificates and a CRL revoking every tenth,
then times ``openssl verify -CAfile root -untrusted fleet -crl_check -CRLfile crl``
over all N certificates (one process), ``bastion pki verify`` over all N (one CLI
process, interpreter start-up included) and the library ``verify_chain`` over all N in
this process. Verdicts must agree. Prints median wall/CPU time and the ratios to openssl.
Other work on the machine makes the figures noisy (load average printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.errors import RevokedError
from bastion.io.runner import require_tool
from bastion.trust import pki
from bastion.trust.signer import SoftwareSigner

PEM = serialization.Encoding.PEM


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _time(func: Callable[[], object]) -> tuple[float, float]:
    cpu, start = _cpu(), time.perf_counter()
    func()
    return time.perf_counter() - start, _cpu() - cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--certs", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    openssl = require_tool("openssl")
    bastion = str(Path(sys.executable).with_name("bastion"))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        rs = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
        root = pki.CertificateAuthority(rs, pki.create_root_ca(rs, "Bench Root"))
        fs = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
        fleet = pki.CertificateAuthority(
            fs, pki.create_intermediate_ca(root, fs.public_key(), "Bench Fleet")
        )
        certs = []
        for i in range(args.certs):
            k = ec.generate_private_key(ec.SECP256R1())
            csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
            pem = csr.sign(k, hashes.SHA256()).public_bytes(PEM)
            certs.append(pki.issue_device_certificate(fleet, pem, f"dev-{i}"))
        now = dt.datetime.now(dt.UTC)
        revoked = [pki.RevokedEntry(c.serial_number, now) for c in certs[::10]]
        crl = pki.build_crl(fleet, revoked, crl_number=1)
        (d / "root.pem").write_bytes(root.certificate.public_bytes(PEM))
        (d / "fleet.pem").write_bytes(fleet.certificate.public_bytes(PEM))
        (d / "crl.pem").write_bytes(crl.public_bytes(PEM))
        paths = []
        for i, c in enumerate(certs):
            paths.append(str(d / f"d{i}.pem"))
            Path(paths[-1]).write_bytes(c.public_bytes(PEM))
        expect_bad = {paths[i] for i in range(0, args.certs, 10)}

        def run_openssl() -> set[str]:
            out = subprocess.run(
                [
                    openssl,
                    "verify",
                    "-CAfile",
                    str(d / "root.pem"),
                    "-untrusted",
                    str(d / "fleet.pem"),
                    "-crl_check",
                    "-CRLfile",
                    str(d / "crl.pem"),
                    *paths,
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            return {p for p in paths if f"{p}: OK" not in out}

        def run_cli() -> set[str]:
            out = subprocess.run(
                [
                    bastion,
                    "pki",
                    "verify",
                    "--root",
                    str(d / "root.pem"),
                    "--untrusted",
                    str(d / "fleet.pem"),
                    "--crl",
                    str(d / "crl.pem"),
                    *paths,
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            return {p for p in paths if f"{p}: OK" not in out}

        def run_lib() -> set[str]:
            bad = set()
            for p, c in zip(paths, certs, strict=True):
                try:
                    pki.verify_chain(
                        c, roots=[root.certificate], intermediates=[fleet.certificate], crls=[crl]
                    )
                except RevokedError:
                    bad.add(p)
            return bad

        rows: dict[str, list[tuple[float, float]]] = {"openssl": [], "cli": [], "lib": []}
        for _ in range(args.runs):
            for name, func in (("openssl", run_openssl), ("cli", run_cli), ("lib", run_lib)):
                verdict: list[set[str]] = []
                rows[name].append(_time(lambda f=func, v=verdict: v.append(f())))
                assert verdict[0] == expect_bad, f"{name} verdicts differ"
        wall = {k: statistics.median(w for w, _ in v) for k, v in rows.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in rows.items()}
        print(
            f"{args.certs} device chains + CRL ({len(expect_bad)} revoked), {args.runs} runs, "
            f"load average {os.getloadavg()[0]:.2f}; verdicts agree"
        )
        labels = {
            "openssl": "openssl verify (1 process)",
            "cli": "bastion pki verify (1 process)",
            "lib": "verify_chain (library)",
        }
        for k, label in labels.items():
            ratio = f"{wall[k] / wall['openssl']:.2f}x / {cpu[k] / cpu['openssl']:.2f}x"
            print(f"{label:30} {wall[k] * 1000:9.1f} ms wall {cpu[k] * 1000:9.1f} ms cpu  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
