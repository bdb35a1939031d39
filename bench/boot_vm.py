"""Benchmark: a real boot to running under QEMU, and the UKI build + sign of that boot.

Usage: .venv/bin/python bench/boot_vm.py [--runs 3] [--timeout 240] [--no-data] [--dir DIR]

Builds what the e2e tests boot: the host's newest kernel, bastion's test initrd, a
throwaway db key enrolled in an OVMF store by ``build/ovmf.py`` (Secure Boot on), a PCR
signing key (``.pcrsig``) and, unless ``--no-data``, the LUKS2 data volume sealed to the
swtpm state the VM boots with. Then:

1. one boot (``io/qemu.boot``, TCG): wall seconds from QEMU start to ``BASTION: running``
   (the data volume unlocked first) and to QEMU's exit;
2. on the same kernel, initrd, os-release and command line, ``objcopy`` + ``sbsign``
   against ``bastion uki build`` + ``uki sign`` (CLI) and ``build_uki`` + ``sign_pe``
   (library), and the verifications, with bench/uki.py's functions (median of ``--runs``).

Under TCG one boot takes a whole core for 25-50 s; other work on the machine makes the
figures noisy (the load average is printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.build import datavol, disk, initrd, ovmf
from bastion.formats.bootlog import Outcome
from bastion.formats.efivars import encode_signature_lists
from bastion.formats.uki import uki_sections
from bastion.io import qemu
from bastion.trust import secureboot
from bastion.trust.keys import public_key_to_pem
from bastion.trust.signer import SignatureScheme, SoftwareSigner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import uki as bench_uki  # bench/uki.py: the objcopy + sbsign comparison


def _enrolled_vars(d: Path, db: x509.Certificate) -> Path:
    """Debian's empty OVMF store with a throwaway PK and KEK, ``db``, Secure Boot on."""
    pk_key, kek_key = bench_uki.db_key(d / "pk"), bench_uki.db_key(d / "kek")
    pk, kek = pk_key[1], kek_key[1]
    owner = secureboot.owner_guid(pk)
    esl = {
        name: encode_signature_lists([secureboot.certificate_list(owner, cert)])
        for name, cert in (("PK", pk), ("KEK", kek), ("db", db))
    }
    out = d / "vars.fd"
    ovmf.enrol_ovmf_vars(
        out,
        pk=esl["PK"],
        kek=esl["KEK"],
        db=esl["db"],
        owner=owner,
        timestamp=dt.datetime.now(dt.UTC),
        template=qemu.DEFAULT_VARS,
    )
    return out


def _root(folder: Path) -> Path:
    (folder / "etc").mkdir(parents=True)
    (folder / "etc" / "hello.txt").write_text("hello from the verity root\n")
    (folder / "usr").mkdir()
    (folder / "usr" / "blob").write_bytes(bytes(i * 7 % 251 for i in range(256 * 1024)))
    return folder


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=qemu.DEFAULT_TIMEOUT)
    ap.add_argument("--no-data", action="store_true", help="no LUKS2 data volume")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    tools = bench_uki.reference_tools()
    kernels = initrd.host_kernels()
    if tools is None or not kernels:
        if not kernels:
            print("no /boot/vmlinuz-*: apt-get install linux-image-amd64", file=sys.stderr)
        return 1
    kernel = kernels[-1]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        for sub in ("pk", "kek", "uki"):
            (d / sub).mkdir()
        key, cert = bench_uki.db_key(d)
        sb = disk.SecureBootSigner(SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256), cert)
        vars_ = _enrolled_vars(d, cert)
        pcr_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pcr_signer = SoftwareSigner(pcr_key, SignatureScheme.RSA_PKCS1V15_SHA256)
        started = time.perf_counter()
        initrd_bytes = initrd.build_initrd(initrd.InitrdSpec(initrd.host_kernel_release(kernel)))
        initrd_s = time.perf_counter() - started
        data = None
        if not args.no_data:
            data = datavol.build_data_volume(
                d / "data.luks",
                d / "tpm",
                public_key_to_pem(pcr_signer.public_key()),
                b"bench recovery passphrase",
            )
        started = time.perf_counter()
        image = disk.build_vm_image(
            disk.VmImageSpec(
                kernel=kernel.read_bytes(),
                initrd=initrd_bytes,
                root_dir=_root(d / "root"),
                pcr_signer=pcr_signer,
                data_volume=None if data is None else data.path,
            ),
            d / "disk.img",
            secure_boot=sb,
        )
        build_s = time.perf_counter() - started
        config = qemu.VmConfig(vars=vars_, timeout=args.timeout)
        # one QEMU at a time on this machine: the e2e tests' lock (tests/e2e/conftest.py)
        with open(Path(tempfile.gettempdir()) / "bastion-e2e-qemu.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            result = qemu.boot(
                image.path, d / "run", config, tpm_state=None if data is None else data.tpm_state
            )
        serial = result.serial_log.read_text("utf-8", "replace")
        print(
            f"VM boot (TCG, Secure Boot on, UKI {len(image.uki) / (1 << 20):.1f} MiB, initrd "
            f"{len(initrd_bytes) / (1 << 20):.1f} MiB), load {os.getloadavg()[0]:.2f}"
        )
        print(f"initrd build {initrd_s:.2f} s, image build {build_s:.2f} s")
        if result.outcome is not Outcome.RUNNING:
            print(f"boot did not reach running: {result.outcome}: {result.reason}")
            return 1
        unlocked = "BASTION: data unlocked" in serial
        if data is not None and not unlocked:
            print("boot reached running without unlocking the data volume")
            return 1
        running = result.outcome_seconds or result.seconds
        what = "running, data unlocked" if unlocked else "running"
        print(f"boot to {what:<22} {running:.1f} s")
        print(f"boot to QEMU exit{'':<13} {result.seconds:.1f} s")
        # the same inputs through objcopy + sbsign and through bastion
        sections = uki_sections(image.uki)
        files = {name: sections[name] for name in (".osrel", ".cmdline", ".linux", ".initrd")}
        for name in ("db.key", "db.crt"):
            (d / "uki" / name).write_bytes((d / name).read_bytes())
        med, size = bench_uki.compare(d / "uki", files, args.runs, tools)
        bench_uki.report(med, size, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
