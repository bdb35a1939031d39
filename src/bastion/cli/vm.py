"""``bastion vm build|boot``: a real boot of a bastion disk under QEMU, OVMF and swtpm.

``vm build OUT (--root DIR | --root-image FILE) [--kernel K] [--initrd I]
[--db-key KEY --db-cert CERT] [--cmdline WORD]... [--no-loader] [--tries N]
[--pcr-key KEY] [--data-tpm-state DIR --data-recovery-file F [--data-size MIB]]`` makes a
GPT disk with an ESP holding (signed) systemd-boot as \\EFI\\BOOT\\BOOTX64.EFI and the
UKI as the BLS entry \\EFI\\Linux\\bastion+3-0.efi (``--no-loader``: the UKI itself as
BOOTX64.EFI), and an erofs root with its dm-verity partition; without ``--initrd`` a
test initramfs is built from the host (:mod:`bastion.build.initrd`); ``--pcr-key`` adds
``.pcrpkey``/``.pcrsig``, ``--data-tpm-state`` a LUKS2 data partition whose TPM token is
sealed to that swtpm state (:mod:`bastion.build.datavol`).
``vm boot IMAGE [--expect OUTCOME] [--vars FILE] [--timeout S] [--work DIR]
[--eventlog FILE] [--tpm-state DIR] [--quote-nonce HEX]`` boots it once and exits 0 when
the outcome is the expected one (default ``running``), 1 otherwise. Both print JSON with
``--json``. See docs/vm.md.
``vm build --tamper-response R [--audit verity]`` adds the signed profile's dm-verity
corruption response to the UKI command line (ADR 0028).
``vm initrd-files OUTDIR (--image DISK | --root-hash HEX [--data-partuuid UUID])
[--tamper-response R] [--audit F]...`` writes what a product initrd needs from bastion
(the UKI command line words, crypttab, the TPM lock unit, the anti-rollback unit and its
script); see docs/boot.md.
"""

from __future__ import annotations

import argparse
import base64
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.build import datavol, device_initrd, disk, initrd
from bastion.cli._common import add_json_flag, emit, fail_line
from bastion.cli.sign import passphrase_prompt
from bastion.device.profile import Feature, TamperResponse, make_profile
from bastion.errors import ConfigError, FormatError
from bastion.formats import gpt
from bastion.formats.bootlog import Outcome
from bastion.io import qemu
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import CERT_MAX_SIZE, KEY_FILE_MAX_SIZE, PE_MAX_IMAGE_SIZE
from bastion.storage.disk_image import DiskImage
from bastion.trust.keys import open_signer, public_key_to_pem
from bastion.trust.pki import load_certificates
from bastion.trust.signer import SignatureScheme, Signer

#: the fw_cfg file the test initrd reads its quote nonce from
QUOTE_NONCE_FW_CFG = "opt/bastion/nonce"


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
    pcr_signer = _pcr_signer(args)
    with tempfile.TemporaryDirectory(prefix="bastion-vm-data-") as tmp:
        data = _data_volume(args, pcr_signer, Path(tmp))
        image = _build_image(
            args,
            kernel,
            initrd_bytes=initrd_bytes,
            secure_boot=secure_boot,
            pcr_signer=pcr_signer,
            data=data,
        )
    doc = {
        "output": str(image.path),
        "root_hash": image.root_hash.hex(),
        "cmdline": image.cmdline,
        "uki_size": len(image.uki),
        "uki_path": image.uki_path,
        "signed": image.signed,
        "pcrsig": pcr_signer is not None,
        "data_volume": None
        if data is None
        else {"uuid": data.uuid, "tpm_state": str(data.tpm_state), "token": data.enrollment.token},
        "partitions": [
            {"name": p.name, "type": str(p.type_guid), "uuid": str(p.part_guid), "size": p.size}
            for p in image.layout.partitions
        ],
    }
    emit(
        args,
        f"built {image.path}: roothash {image.root_hash.hex()}, UKI {len(image.uki)} bytes"
        f" ({'signed' if image.signed else 'unsigned'})"
        + ("" if data is None else f", data volume {data.uuid} sealed to {data.tpm_state}"),
        doc,
    )
    return 0


def _pcr_signer(args: argparse.Namespace) -> Signer | None:
    if not args.pcr_key:
        return None
    return open_signer(
        args.pcr_key,
        passphrase=passphrase_prompt(args.pcr_key),
        scheme=SignatureScheme.RSA_PKCS1V15_SHA256,
    )


def _data_volume(
    args: argparse.Namespace, pcr_signer: Signer | None, folder: Path
) -> datavol.DataVolume | None:
    if not args.data_tpm_state:
        if args.data_recovery_file:
            raise ConfigError("--data-recovery-file needs --data-tpm-state")
        return None
    if pcr_signer is None:
        raise ConfigError("a data volume is unlocked by the signed PCR 11 policy: give --pcr-key")
    if not args.data_recovery_file:
        raise ConfigError("give the data volume's recovery passphrase (--data-recovery-file)")
    recovery = read_bounded(
        args.data_recovery_file, KEY_FILE_MAX_SIZE, "recovery passphrase"
    ).rstrip(b"\n")
    return datavol.build_data_volume(
        folder / "data.luks",
        Path(args.data_tpm_state),
        public_key_to_pem(pcr_signer.public_key()),
        recovery,
        size=args.data_size * datavol.MiB,
    )


def _build_image(
    args: argparse.Namespace,
    kernel: Path,
    *,
    initrd_bytes: bytes,
    secure_boot: disk.SecureBootSigner | None,
    pcr_signer: Signer | None,
    data: datavol.DataVolume | None,
) -> disk.VmImage:
    return disk.build_vm_image(
        disk.VmImageSpec(
            kernel=read_bounded(kernel, PE_MAX_IMAGE_SIZE, "kernel"),
            initrd=initrd_bytes,
            root_dir=Path(args.root) if args.root else None,
            root_image=Path(args.root_image) if args.root_image else None,
            cmdline=(*(args.cmdline or disk.DEFAULT_CONSOLE), *_verity_words(args)),
            stub=Path(args.stub),
            loader=None if args.no_loader else Path(args.loader),
            entry_name=args.entry_name,
            tries=None if args.tries == 0 else args.tries,
            pcr_signer=pcr_signer,
            data_volume=None if data is None else data.path,
        ),
        Path(args.output),
        secure_boot=secure_boot,
    )


def _verity_words(args: argparse.Namespace) -> list[str]:
    """The profile's corruption response words, when a profile was given."""
    if args.tamper_response is None and not args.audit:
        return []  # the kernel's default: the read fails (EIO), the test init reports it
    return device_initrd.verity_words(
        make_profile(args.tamper_response or TamperResponse.HALT, tuple(args.audit or ()))
    )


def _image_ids(path: Path) -> tuple[bytes, str | None]:
    """The root hash (DPS: root PARTUUID || verity PARTUUID) and the data PARTUUID."""
    layout = DiskImage(path).layout()
    try:
        root = layout.find(disk.PART_ROOT)
        verity = layout.find(disk.PART_VERITY)
    except FormatError as exc:
        raise ConfigError(f"{path} is not a bastion disk with a verity root: {exc}") from exc
    if root.type_guid != gpt.TYPE_ROOT_X86_64 or verity.type_guid != gpt.TYPE_ROOT_VERITY_X86_64:
        raise ConfigError(f"{path}: root and verity partitions lack the DPS type GUIDs")
    data = next((p for p in layout.partitions if p.name == disk.PART_DATA), None)
    return root.part_guid.bytes + verity.part_guid.bytes, None if data is None else str(
        data.part_guid
    )


def _initrd_files(args: argparse.Namespace) -> int:
    if bool(args.image) == bool(args.root_hash):
        raise ConfigError("give the disk (--image) or its root hash (--root-hash)")
    if args.image:
        if args.data_partuuid:
            raise ConfigError("--data-partuuid is read from the image")
        root_hash, data_uuid = _image_ids(Path(args.image))
    else:
        try:
            root_hash = bytes.fromhex(args.root_hash)
        except ValueError:
            raise ConfigError(f"--root-hash {args.root_hash!r} is not hex") from None
        data_uuid = args.data_partuuid
    profile = make_profile(args.tamper_response or TamperResponse.HALT, tuple(args.audit or ()))
    files = device_initrd.device_initrd_files(root_hash, data_uuid, profile)
    out = Path(args.output)
    for name, content in files.items():
        atomic_write(out / name, content)
    emit(
        args,
        "\n".join(f"wrote {out / name}" for name in files)
        + f"\nkernel command line words: {files['cmdline'].decode().strip()}",
        {
            "output": str(out),
            "files": sorted(files),
            "cmdline": files["cmdline"].decode().split(),
            "verity_response": str(profile.verity_error_response()),
        },
    )
    return 0


def _add_profile_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tamper-response",
        choices=[str(r) for r in TamperResponse],
        help="the signed profile's tamper response (sets the dm-verity corruption response)",
    )
    parser.add_argument(
        "--audit",
        action="append",
        metavar="FEATURE",
        choices=[str(f) for f in Feature],
        help="a feature the profile audits instead of enforcing (verity: ignore corruption)",
    )


def _boot(args: argparse.Namespace) -> int:
    extra: tuple[str, ...] = ()
    if args.quote_nonce is not None:
        nonce = args.quote_nonce.lower()
        if not (2 <= len(nonce) <= 128 and len(nonce) % 2 == 0) or any(
            c not in "0123456789abcdef" for c in nonce
        ):
            raise ConfigError(f"--quote-nonce {args.quote_nonce!r}: expected 1..64 bytes of hex")
        extra = ("-fw_cfg", f"name={QUOTE_NONCE_FW_CFG},string={nonce}")
    config = qemu.VmConfig(
        code=Path(args.code),
        vars=Path(args.vars),
        timeout=args.timeout,
        accel=args.accel,
        memory_mib=args.memory,
        tpm=not args.no_tpm,
        extra_args=extra,
        writable=args.writable,
    )
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bastion-vm-"))
    tpm_state = Path(args.tpm_state) if args.tpm_state else None
    result = qemu.boot(Path(args.image), work, config, tpm_state=tpm_state)
    if args.eventlog:
        if result.report.eventlog is None:
            raise ConfigError("the guest printed no event log (was the TPM enabled?)")
        atomic_write(Path(args.eventlog), result.report.eventlog)
    expected = Outcome(args.expect)
    doc: dict[str, Any] = {**result.to_json(), "expected": str(expected)}
    if result.report.quote:
        doc["quote"] = {k: base64.b64encode(v).decode() for k, v in result.report.quote.items()}
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
    b.add_argument("--pcr-key", metavar="KEY", help="RSA key signing the UKI's .pcrsig")
    b.add_argument(
        "--data-tpm-state",
        metavar="DIR",
        help="add a LUKS2 data volume sealed to this swtpm state (boot with --tpm-state DIR)",
    )
    b.add_argument("--data-recovery-file", metavar="FILE", help="its recovery passphrase")
    b.add_argument(
        "--data-size", type=int, default=datavol.DEFAULT_DATA_SIZE // datavol.MiB, metavar="MIB"
    )
    _add_profile_flags(b)
    add_json_flag(b)
    b.set_defaults(func=_build)

    f = sub.add_parser(
        "initrd-files",
        help="what a product initrd needs: cmdline words, crypttab, TPM lock, anti-rollback",
    )
    f.add_argument("output", metavar="OUTDIR")
    f.add_argument("--image", metavar="DISK", help="a disk from vm build (root hash, data UUID)")
    f.add_argument("--root-hash", metavar="HEX", help="the verity root hash")
    f.add_argument("--data-partuuid", metavar="UUID", help="the data partition's PARTUUID")
    _add_profile_flags(f)
    add_json_flag(f)
    f.set_defaults(func=_initrd_files)

    r = sub.add_parser("boot", help="boot IMAGE once and check the outcome")
    r.add_argument("image", metavar="IMAGE")
    r.add_argument("--expect", default=str(Outcome.RUNNING), choices=[str(o) for o in Outcome])
    r.add_argument("--vars", default=str(qemu.DEFAULT_VARS), help="OVMF variable store")
    r.add_argument("--code", default=str(qemu.DEFAULT_CODE), help="OVMF code")
    r.add_argument("--timeout", type=float, default=qemu.DEFAULT_TIMEOUT, metavar="SECONDS")
    r.add_argument("--accel", default="tcg", choices=("tcg", "kvm"))
    r.add_argument("--memory", type=int, default=1024, metavar="MIB")
    r.add_argument("--no-tpm", action="store_true", help="boot without a swtpm")
    r.add_argument("--tpm-state", metavar="DIR", help="swtpm state to boot with (kept)")
    r.add_argument(
        "--writable",
        action="store_true",
        help="let the guest write IMAGE (systemd-boot's boot-counter renames stay)",
    )
    r.add_argument("--work", metavar="DIR", help="keep logs here (default: a new temp folder)")
    r.add_argument("--eventlog", metavar="FILE", help="write the guest's TCG event log here")
    r.add_argument(
        "--quote-nonce",
        metavar="HEX",
        help="hand the guest this nonce (QEMU fw_cfg); a root holding /etc/bastion/ak.pub "
        "and ak.priv quotes PCRs 4,7,9,11 with it (JSON: quote)",
    )
    add_json_flag(r)
    r.set_defaults(func=_boot)
