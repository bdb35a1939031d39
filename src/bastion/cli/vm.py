"""``bastion vm build|boot``: a real boot of a bastion disk under QEMU, OVMF and swtpm.

``vm build OUT (--root DIR | --root-image FILE) [--kernel K] [--initrd I]
[--db-key KEY --db-cert CERT] [--cmdline WORD]... [--no-loader] [--tries N]`` makes a
GPT disk with an ESP holding (signed) systemd-boot as \\EFI\\BOOT\\BOOTX64.EFI and the
UKI as the BLS entry \\EFI\\Linux\\bastion+3-0.efi (``--no-loader``: the UKI itself as
BOOTX64.EFI), and an erofs root with its dm-verity partition; without ``--initrd`` a
test initramfs is built from the host (:mod:`bastion.build.initrd`).
``vm boot IMAGE [--expect OUTCOME] [--vars FILE] [--timeout S] [--work DIR]
[--eventlog FILE]`` boots it once and exits 0 when the outcome is the expected one
(default ``running``), 1 otherwise. Both print JSON with ``--json``. See docs/vm.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.build import disk, initrd
from bastion.cli._common import add_json_flag, emit, fail_line
from bastion.cli.sign import passphrase_prompt
from bastion.errors import ConfigError
from bastion.formats.bootlog import Outcome
from bastion.io import qemu
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import CERT_MAX_SIZE, PE_MAX_IMAGE_SIZE
from bastion.trust.keys import open_signer
from bastion.trust.pki import load_certificates
from bastion.trust.signer import SignatureScheme


def _kernel(path: str | None) -> Path:
    if path:
        return Path(path)
    kernels = initrd.host_kernels()
    if not kernels:
        raise ConfigError("no /boot/vmlinuz-* on this machine: give --kernel (linux-image-amd64)")
    return kernels[-1]


def _secure_boot(args: argparse.Namespace) -> disk.SecureBootSigner | None:
    if not args.db_key and not args.db_cert:
        return None
    if not (args.db_key and args.db_cert):
        raise ConfigError("--db-key and --db-cert go together")
    cert, *chain = load_certificates(
        read_bounded(args.db_cert, CERT_MAX_SIZE, "certificate"), what=args.db_cert
    )
    scheme = (
        SignatureScheme.RSA_PKCS1V15_SHA256
        if isinstance(cert.public_key(), rsa.RSAPublicKey)
        else None
    )
    signer = open_signer(args.db_key, passphrase=passphrase_prompt(args.db_key), scheme=scheme)
    return disk.SecureBootSigner(signer, cert, tuple(chain))


def _build(args: argparse.Namespace) -> int:
    secure_boot = _secure_boot(args)
    kernel = _kernel(args.kernel)
    if args.initrd:
        initrd_bytes = read_bounded(args.initrd, PE_MAX_IMAGE_SIZE, "initrd")
    else:
        spec = initrd.InitrdSpec(args.kernel_release or initrd.host_kernel_release(kernel))
        initrd_bytes = initrd.build_initrd(spec, compression=args.compression)
    image = disk.build_vm_image(
        disk.VmImageSpec(
            kernel=read_bounded(kernel, PE_MAX_IMAGE_SIZE, "kernel"),
            initrd=initrd_bytes,
            root_dir=Path(args.root) if args.root else None,
            root_image=Path(args.root_image) if args.root_image else None,
            cmdline=tuple(args.cmdline or disk.DEFAULT_CONSOLE),
            stub=Path(args.stub),
            loader=None if args.no_loader else Path(args.loader),
            entry_name=args.entry_name,
            tries=None if args.tries == 0 else args.tries,
        ),
        Path(args.output),
        secure_boot=secure_boot,
    )
    doc = {
        "output": str(image.path),
        "root_hash": image.root_hash.hex(),
        "cmdline": image.cmdline,
        "uki_size": len(image.uki),
        "uki_path": image.uki_path,
        "signed": image.signed,
        "partitions": [
            {"name": p.name, "type": str(p.type_guid), "uuid": str(p.part_guid), "size": p.size}
            for p in image.layout.partitions
        ],
    }
    emit(
        args,
        f"built {image.path}: roothash {image.root_hash.hex()}, UKI {len(image.uki)} bytes"
        f" ({'signed' if image.signed else 'unsigned'})",
        doc,
    )
    return 0


def _boot(args: argparse.Namespace) -> int:
    config = qemu.VmConfig(
        code=Path(args.code),
        vars=Path(args.vars),
        timeout=args.timeout,
        accel=args.accel,
        memory_mib=args.memory,
        tpm=not args.no_tpm,
    )
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bastion-vm-"))
    result = qemu.boot(Path(args.image), work, config)
    if args.eventlog:
        if result.report.eventlog is None:
            raise ConfigError("the guest printed no event log (was the TPM enabled?)")
        atomic_write(Path(args.eventlog), result.report.eventlog)
    expected = Outcome(args.expect)
    doc: dict[str, Any] = {**result.to_json(), "expected": str(expected)}
    doc["ok"] = result.outcome is expected
    emit(
        args,
        f"{result.outcome}: {result.reason} ({result.seconds:.1f} s; serial log "
        f"{result.serial_log})",
        doc,
    )
    if result.outcome is not expected:
        if not getattr(args, "json", False):
            fail_line(f"expected {expected}, got {result.outcome}")
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add the ``vm`` command group."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "vm", help="build a bootable disk and boot it under QEMU with OVMF and swtpm"
    )
    sub = parser.add_subparsers(dest="vm_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)

    b = sub.add_parser("build", help="ESP with the UKI + verity root, as a GPT disk")
    b.add_argument("output", metavar="OUT")
    root = b.add_mutually_exclusive_group(required=True)
    root.add_argument("--root", metavar="DIR", help="root folder (made into erofs)")
    root.add_argument("--root-image", metavar="FILE", help="a ready erofs image")
    b.add_argument("--kernel", metavar="FILE", help="default: the newest /boot/vmlinuz-*")
    b.add_argument("--kernel-release", metavar="REL", help="modules folder (default: from name)")
    b.add_argument("--initrd", metavar="FILE", help="default: a test initramfs from the host")
    b.add_argument(
        "--compression",
        default=str(initrd.Compression.ZSTD),
        choices=[str(c) for c in initrd.Compression],
    )
    b.add_argument("--cmdline", action="append", metavar="WORD", help="replaces the defaults")
    b.add_argument("--stub", default=str(disk.DEFAULT_STUB), help="systemd EFI stub")
    b.add_argument("--loader", default=str(disk.DEFAULT_LOADER), help="systemd-boot image")
    b.add_argument("--no-loader", action="store_true", help="the UKI itself as BOOTX64.EFI")
    b.add_argument("--entry-name", default="bastion", help="BLS entry name (default bastion)")
    b.add_argument(
        "--tries",
        type=int,
        default=disk.DEFAULT_TRIES,
        metavar="N",
        help="boot counting tries (0: no counter)",
    )
    b.add_argument("--db-key", metavar="KEY", help="Secure Boot db key (file: or tpm: URI)")
    b.add_argument("--db-cert", metavar="CERT", help="its certificate (PEM, chain after it)")
    add_json_flag(b)
    b.set_defaults(func=_build)

    r = sub.add_parser("boot", help="boot IMAGE once and check the outcome")
    r.add_argument("image", metavar="IMAGE")
    r.add_argument("--expect", default=str(Outcome.RUNNING), choices=[str(o) for o in Outcome])
    r.add_argument("--vars", default=str(qemu.DEFAULT_VARS), help="OVMF variable store")
    r.add_argument("--code", default=str(qemu.DEFAULT_CODE), help="OVMF code")
    r.add_argument("--timeout", type=float, default=qemu.DEFAULT_TIMEOUT, metavar="SECONDS")
    r.add_argument("--accel", default="tcg", choices=("tcg", "kvm"))
    r.add_argument("--memory", type=int, default=1024, metavar="MIB")
    r.add_argument("--no-tpm", action="store_true", help="boot without a swtpm")
    r.add_argument("--work", metavar="DIR", help="keep logs here (default: a new temp folder)")
    r.add_argument("--eventlog", metavar="FILE", help="write the guest's TCG event log here")
    add_json_flag(r)
    r.set_defaults(func=_boot)
