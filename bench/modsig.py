"""Benchmark: bastion module signing/verification against the kernel's sign-file, same run.

Usage: .venv/bin/python bench/modsig.py [--size-mib 64] [--runs 3] [--dir DIR]

Makes an RSA-3072 key and certificate and a random "module" of SIZE MiB, then in each
run times ``sign-file sha256 key cert module out`` next to ``bastion module sign`` (the
CLI: a fresh Python process, start-up included) and the library ``sign_module`` in this
process; and ``bastion module verify`` / ``verify_module`` (sign-file has no verify).
Outputs are compared byte for byte. Prints median wall times and the ratio
bastion/sign-file. Other work on the machine makes the figures noisy (load average
printed).
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
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bastion.formats.modsig import sign_module, verify_module
from bastion.io.runner import find_tool
from bastion.trust.signer import SignatureScheme, SoftwareSigner

SIGN_FILE = "/usr/lib/linux-kbuild-6.1/scripts/sign-file"


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _time(func: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU of this process and its children) seconds of ``func()``."""
    cpu, start = _cpu(), time.perf_counter()
    func()
    return time.perf_counter() - start, _cpu() - cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    sign_file = find_tool("sign-file", (os.path.dirname(SIGN_FILE),))
    if sign_file is None:
        print("sign-file not found: apt-get install linux-kbuild-6.1", file=sys.stderr)
        return 1
    bastion = str(Path(sys.executable).with_name("bastion"))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench module key")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        (d / "key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (d / "cert.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
        module = os.urandom(args.size_mib * 1024 * 1024)
        (d / "m.ko").write_bytes(module)
        signer = SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256)
        rows: dict[str, list[tuple[float, float]]] = {
            k: [] for k in ("sf", "cli", "lib", "vcli", "vlib")
        }
        for _ in range(args.runs):
            rows["sf"].append(
                _time(
                    lambda: subprocess.run(
                        [
                            sign_file,
                            "sha256",
                            str(d / "key.pem"),
                            str(d / "cert.der"),
                            str(d / "m.ko"),
                            str(d / "ref.ko"),
                        ],
                        check=True,
                    )
                )
            )
            rows["cli"].append(
                _time(
                    lambda: subprocess.run(
                        [
                            bastion,
                            "module",
                            "sign",
                            "--key",
                            str(d / "key.pem"),
                            "--cert",
                            str(d / "cert.der"),
                            str(d / "m.ko"),
                            "-o",
                            str(d / "ours.ko"),
                        ],
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                )
            )
            out: list[bytes] = []
            rows["lib"].append(
                _time(lambda out=out: out.append(sign_module(module, cert, signer.sign)))
            )
            rows["vcli"].append(
                _time(
                    lambda: subprocess.run(
                        [
                            bastion,
                            "module",
                            "verify",
                            "--cert",
                            str(d / "cert.der"),
                            str(d / "ref.ko"),
                        ],
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                )
            )
            ref = (d / "ref.ko").read_bytes()
            rows["vlib"].append(_time(lambda ref=ref: verify_module(ref, cert)))
            assert (d / "ours.ko").read_bytes() == ref == out[0], "outputs differ"
        wall = {k: statistics.median(w for w, _ in v) for k, v in rows.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in rows.items()}
        print(
            f"module {args.size_mib} MiB, RSA-3072/SHA-256, {args.runs} runs, "
            f"load average {os.getloadavg()[0]:.2f}; outputs byte-identical"
        )
        print(f"{'':28} {'wall ms':>9} {'cpu ms':>9}  ratio wall / cpu vs sign-file")
        labels = {
            "sf": "sign-file",
            "cli": "bastion module sign (CLI)",
            "lib": "sign_module (library)",
            "vcli": "bastion module verify (CLI)",
            "vlib": "verify_module (library)",
        }
        for k, label in labels.items():
            ratio = f"  {wall[k] / wall['sf']:.2f}x / {cpu[k] / cpu['sf']:.2f}x"
            print(f"{label:28} {wall[k] * 1000:9.1f} {cpu[k] * 1000:9.1f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
