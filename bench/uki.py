"""Benchmark: bastion UKI build + Authenticode sign against objcopy + sbsign, same run.

Usage: .venv/bin/python bench/uki.py [--kernel-mib 12] [--initrd-mib 48] [--runs 3] [--dir DIR]

Makes an RSA-2048 db key and certificate and random "kernel" and "initrd" files, then in
each run times ``objcopy --add-section ... stub uki`` followed by ``sbsign`` next to
``bastion uki build`` + ``bastion uki sign`` (the CLI: fresh Python processes, start-up
included) and the library ``build_uki`` + ``sign_pe`` in this process; then
``sbverify`` against ``bastion uki verify`` / ``verify_pe``. Both UKIs are checked with
``sbverify``. Prints median wall times and the ratios bastion / reference (lower is
faster). Other work on the machine makes the figures noisy (load average printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
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

from bastion.build.uki import UkiInputs, build_uki
from bastion.io.runner import find_tool
from bastion.trust.authenticode import sign_pe, verify_pe
from bastion.trust.signer import SignatureScheme, SoftwareSigner

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
VMAS = {".osrel": 0x20000, ".cmdline": 0x30000, ".linux": 0x2000000, ".initrd": 0x3000000}


def _time(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def reference_tools() -> dict[str, str] | None:
    """objcopy, sbsign and sbverify, or None (with a message) when one or the stub is missing."""
    tools = {t: find_tool(t) for t in ("objcopy", "sbsign", "sbverify")}
    missing = [t for t, p in tools.items() if p is None]
    if missing or not STUB.is_file():
        print(
            f"missing {missing or STUB}: apt-get install binutils sbsigntool systemd-boot-efi",
            file=sys.stderr,
        )
        return None
    return {t: str(p) for t, p in tools.items()}


def db_key(d: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA-2048 db key and certificate, also written as ``d/db.key`` and ``d/db.crt``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench db")])
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
    (d / "db.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "db.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def random_sections(kernel_mib: int, initrd_mib: int) -> dict[str, bytes]:
    """The four UKI sections with random kernel and initrd of the given sizes."""
    return {
        ".osrel": b"ID=debian\nVERSION_ID=12\n",
        ".cmdline": b"console=ttyS0 quiet\0",
        ".linux": os.urandom(kernel_mib << 20),
        ".initrd": os.urandom(initrd_mib << 20),
    }


def compare(
    d: Path, files: dict[str, bytes], runs: int, tools: dict[str, str]
) -> tuple[dict[str, float], float]:
    """Median seconds of build+sign and verify, reference / bastion CLI / bastion library,
    over ``runs`` runs on the sections ``files`` (keys ``ref cli lib vref vcli vlib``),
    and the UKI size in MiB. Needs :func:`db_key` run on ``d`` first."""
    objcopy, sbsign, sbverify = (tools[t] for t in ("objcopy", "sbsign", "sbverify"))
    bastion = str(Path(sys.executable).with_name("bastion"))
    cert = x509.load_pem_x509_certificate((d / "db.crt").read_bytes())
    key = serialization.load_pem_private_key((d / "db.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    for section, content in files.items():
        (d / section.lstrip(".")).write_bytes(content)
    stub = STUB.read_bytes()
    signer = SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256)
    inputs = UkiInputs(
        linux=files[".linux"],
        initrd=files[".initrd"],
        osrel=files[".osrel"],
        cmdline=files[".cmdline"],
    )
    objcopy_argv = [objcopy]
    for section, vma in VMAS.items():
        objcopy_argv += [
            "--add-section",
            f"{section}={d / section.lstrip('.')}",
            "--change-section-vma",
            f"{section}={vma:#x}",
        ]
    objcopy_argv += [str(STUB), str(d / "ref.efi")]
    sign_argv = [sbsign, "--key", str(d / "db.key"), "--cert", str(d / "db.crt")]
    sign_argv += ["--output", str(d / "ref.signed.efi"), str(d / "ref.efi")]
    cli_build = [bastion, "uki", "build", "--stub", str(STUB), "-o", str(d / "ours.efi")]
    for section in files:
        cli_build += [f"--{section.lstrip('.')}", str(d / section.lstrip("."))]
    cli_sign = [bastion, "uki", "sign", "--key", str(d / "db.key"), "--cert", str(d / "db.crt")]
    cli_sign += [str(d / "ours.efi")]
    rows: dict[str, list[float]] = {k: [] for k in ("ref", "cli", "lib", "vref", "vcli", "vlib")}
    for _ in range(runs):
        rows["ref"].append(_time(lambda: (_run(objcopy_argv), _run(sign_argv))))
        rows["cli"].append(_time(lambda: (_run(cli_build), _run(cli_sign))))
        out: list[bytes] = []
        rows["lib"].append(
            _time(lambda out=out: out.append(sign_pe(build_uki(stub, inputs), signer, cert)))
        )
        rows["vref"].append(
            _time(lambda: _run([sbverify, "--cert", str(d / "db.crt"), str(d / "ours.efi")]))
        )
        rows["vcli"].append(
            _time(
                lambda: _run(
                    [bastion, "uki", "verify", "--db", str(d / "db.crt"), str(d / "ref.signed.efi")]
                )
            )
        )
        rows["vlib"].append(_time(lambda out=out: verify_pe(out[-1], [cert])))
    _run([sbverify, "--cert", str(d / "db.crt"), str(d / "ours.efi")])
    _run([sbverify, "--cert", str(d / "db.crt"), str(d / "ref.signed.efi")])
    med = {k: statistics.median(v) for k, v in rows.items()}
    return med, (d / "ours.efi").stat().st_size / (1 << 20)


def report(med: dict[str, float], size: float, runs: int) -> None:
    """Print the medians of :func:`compare` and the ratios bastion / reference."""
    print(f"UKI of {size:.1f} MiB, {runs} runs, load {os.getloadavg()[0]:.2f}")
    labels = {"cli": "bastion CLI", "lib": "bastion lib"}
    for title, ref, ref_name in (
        ("build+sign", "ref", "objcopy+sbsign"),
        ("verify", "vref", "sbverify"),
    ):
        print(f"{title:<11} {ref_name:<15} {med[ref]:.3f} s")
        for kind, label in labels.items():
            key = kind if ref == "ref" else "v" + kind
            print(f"{'':<11} {label:<15} {med[key]:.3f} s  ratio {med[key] / med[ref]:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel-mib", type=int, default=12)
    ap.add_argument("--initrd-mib", type=int, default=48)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    tools = reference_tools()
    if tools is None:
        return 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        db_key(d)
        files = random_sections(args.kernel_mib, args.initrd_mib)
        med, size = compare(d, files, args.runs, tools)
        report(med, size, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
