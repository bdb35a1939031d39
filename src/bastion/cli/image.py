"""``bastion image build|inspect|verify|pcrs``: signed A/B disk images.

Thin: parses flags, loads the product key set (``bastion keys init``), calls
:mod:`bastion.build.image`, prints text or ``--json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bastion.build import image as img
from bastion.build.fs import FsType
from bastion.cli._common import add_json_flag, add_passphrase_flag, emit, passphrase_source
from bastion.errors import ConfigError, FormatError
from bastion.formats import bootunit as bu
from bastion.io.files import read_bounded
from bastion.limits import BOOT_CONTAINER_MAX_SIZE
from bastion.storage.disk_image import DiskImage, read_archive, read_layout
from bastion.trust.image import ImageTrust, predict_pcrs, verify_image
from bastion.trust.keys import PassphraseCallback
from bastion.trust.keyset import KeySet
from bastion.trust.signer import SignatureScheme


def load_image_keys(folder: str, passphrase: PassphraseCallback | None = None) -> img.ImageKeys:
    """The signers of a product key set folder: online keys only.

    The platform root key signed the bootloader statement at ``keys init``; only a key
    set made before that statement existed still needs the platform root private key.
    """
    ks = KeySet.load(folder, passphrase)
    loader = ks.statement("loader")
    return img.ImageKeys(
        platform_root=ks.verifier("platform-root") if loader else ks.signer("platform-root"),
        loader_statement=loader,
        boot=ks.signer("boot"),
        image=ks.signer("image"),
        verity=ks.signer("verity", scheme=SignatureScheme.RSA_PKCS1V15_SHA256),
        verity_cert=ks.certificate("verity"),
        module=ks.signer("module", scheme=SignatureScheme.RSA_PKCS1V15_SHA256),
        module_cert=ks.certificate("module"),
    )


def load_image_trust(folder: str) -> ImageTrust:
    """The public side of a product key set folder."""
    ks = KeySet.load(folder)
    return ImageTrust(
        platform_root=ks.verifier("platform-root"),
        boot=ks.verifier("boot"),
        image=ks.verifier("image"),
        verity_cert=ks.certificate("verity"),
        module_cert=ks.certificate("module"),
    )


_UNITS = {"B": 1, "K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}


def size_arg(text: str) -> int:
    """A size in bytes from ``N`` (MiB), ``NB``, ``NK``, ``NM`` or ``NG`` (binary units)."""
    value = text.strip().upper().removesuffix("IB")
    unit = _UNITS["M"]
    if value[-1:] in _UNITS:
        unit, value = _UNITS[value[-1]], value[:-1]
    if not value.isdigit() or len(value) > 15:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (N MiB, or NB, NK, NM, NG)")
    return int(value) * unit


def _read(path: str, what: str) -> bytes:
    return read_bounded(path, BOOT_CONTAINER_MAX_SIZE, what)


def _build(args: argparse.Namespace) -> int:
    modules: list[tuple[str, bytes]] = []
    if args.modules:
        folder = Path(args.modules)
        if not folder.is_dir():
            raise ConfigError(f"--modules {folder}: not a folder")
        for path in sorted(folder.rglob("*.ko")):
            modules.append((path.name, _read(str(path), "kernel module")))
    try:
        fs = FsType(args.fs)
    except ValueError:
        raise ConfigError(f"--fs {args.fs!r}: expected ext4, squashfs or erofs") from None
    spec = img.ImageSpec(
        rootfs=Path(args.rootfs),
        kernel=_read(args.kernel, "kernel"),
        initrd=_read(args.initrd, "initrd") if args.initrd else b"",
        cmdline=args.cmdline or "",
        modules=tuple(modules),
        version=args.version,
        security_version=args.security_version,
        fs=fs,
        data_size=args.data_size,
        root_size=args.root_size,
        epoch=args.epoch,
    )
    keys = load_image_keys(args.keys, passphrase_source(args, args.keys))
    built = img.build_image(spec, keys, Path(args.output))
    data = dict(built.metadata, path=str(built.path), signature=str(built.path) + ".sig")
    emit(
        args,
        f"built {built.path} ({built.size} bytes)\n"
        f"  sha256     {built.sha256.hex()}\n"
        f"  root hash  {built.root_hash.hex()}\n"
        f"  signature  {built.path}.sig",
        data,
    )
    return 0


def inspect_image(path: Path) -> dict[str, Any]:
    """A description of an image's layout and boot partition (no verification)."""
    layout = read_layout(path)
    doc: dict[str, Any] = {
        "disk_guid": str(layout.disk_guid),
        "size": layout.size,
        "partitions": [
            {
                "name": p.name,
                "type": str(p.type_guid),
                "uuid": str(p.part_guid),
                "offset": p.offset,
                "size": p.size,
                "attributes": f"{p.attributes:#x}",
            }
            for p in layout.partitions
        ],
    }
    try:
        archive = read_archive(path, layout)
        doc["boot"] = {"entries": [n for n in archive.names()]}
        for slot in ("a", "b"):
            name = f"unit.{slot}"
            if name in archive.names():
                unit = bu.parse_unit(archive.get(name))
                doc["boot"][name] = {
                    "security_version": unit.security_version,
                    "cmdline": unit.cmdline.decode("ascii", "replace"),
                    "sections": bu.section_digests(unit.sections()),
                    "modules": [m for m, _ in unit.modules],
                }
    except FormatError as exc:
        doc["boot"] = {"error": str(exc)}
    return doc


def _inspect(args: argparse.Namespace) -> int:
    doc = inspect_image(Path(args.image))
    lines = [f"{args.image}: GPT disk {doc['disk_guid']}, {doc['size']} bytes"]
    for p in doc["partitions"]:
        lines.append(f"  {p['name']:<18} {p['type']}  {p['size'] // 1024:>9} KiB  uuid {p['uuid']}")
    for slot in ("unit.a", "unit.b"):
        unit = doc.get("boot", {}).get(slot)
        if unit:
            lines.append(f"  {slot}: svn {unit['security_version']}, cmdline {unit['cmdline']}")
    emit(args, "\n".join(lines), doc)
    return 0


def _verify(args: argparse.Namespace) -> int:
    trust = load_image_trust(args.keys)
    doc = verify_image(DiskImage(Path(args.image)), trust, full=not args.quick)
    emit(
        args,
        f"{args.image}: OK (image signature, bootloader, boot unit, verity signature"
        f"{', every root block' if not args.quick else ''})",
        doc,
    )
    return 0


def _pcrs(args: argparse.Namespace) -> int:
    if args.slot not in ("a", "b"):
        raise ConfigError(f"--slot {args.slot!r}: expected a or b")
    pcrs = predict_pcrs(DiskImage(Path(args.image)), args.slot)
    data = {"bank": "sha256", "slot": args.slot, "pcrs": {str(k): v.hex() for k, v in pcrs.items()}}
    text = "\n".join(f"sha256:{k:<2} {v.hex()}" for k, v in pcrs.items())
    emit(args, text, data)
    return 0


def _golden(args: argparse.Namespace) -> int:
    from bastion.build.golden import golden_values
    from bastion.trust.golden import sign_golden

    if args.slot not in ("a", "b"):
        raise ConfigError(f"--slot {args.slot!r}: expected a or b")
    golden = golden_values(Path(args.image), load_image_trust(args.keys), args.slot)
    signer = KeySet.load(args.keys, passphrase_source(args, args.keys)).signer("image")
    out = Path(args.output)
    out.write_bytes(sign_golden(golden, signer))
    emit(
        args,
        f"{out}: golden values of {golden.version} (security version "
        f"{golden.security_version}), signed with the image key",
        golden.to_json() | {"output": str(out)},
    )
    return 0


def register(subparsers: Any) -> None:
    """Add the ``image`` command group."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "image", help="build, inspect and verify signed A/B disk images"
    )
    sub = parser.add_subparsers(dest="image_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)

    b = sub.add_parser("build", help="build disk.img and disk.img.sig")
    b.add_argument("--rootfs", required=True, metavar="DIR")
    b.add_argument("--kernel", required=True, metavar="FILE")
    b.add_argument("--initrd", metavar="FILE")
    b.add_argument(
        "--cmdline",
        metavar="TEXT",
        help="extra kernel command line (roothash=, root=, bastion.* ... are set by bastion)",
    )
    b.add_argument("--modules", metavar="DIR", help="*.ko files, signed with the module key")
    b.add_argument("--version", required=True)
    b.add_argument("--security-version", type=int, required=True, metavar="N")
    b.add_argument("--keys", required=True, metavar="DIR", help="from `bastion keys init`")
    b.add_argument("--fs", default="ext4", help="ext4 (default), squashfs or erofs")
    b.add_argument(
        "--data-size",
        type=size_arg,
        default=img.DEFAULT_DATA_SIZE,
        metavar="SIZE",
        help="data partition: N MiB, or with a unit B, K, M, G (default 64; at least 17M)",
    )
    b.add_argument(
        "--root-size",
        type=size_arg,
        metavar="SIZE",
        help="root slot capacity (multiple of 4K; default: the root filesystem's size)",
    )
    b.add_argument("--epoch", type=int, default=0, help="timestamp of every file (reproducible)")
    b.add_argument("-o", "--output", required=True, metavar="disk.img")
    add_passphrase_flag(b)
    add_json_flag(b)
    b.set_defaults(func=_build)

    i = sub.add_parser("inspect", help="show the layout and boot units")
    i.add_argument("image")
    add_json_flag(i)
    i.set_defaults(func=_inspect)

    v = sub.add_parser("verify", help="verify the image signature and every stage offline")
    v.add_argument("image")
    v.add_argument("--keys", required=True, metavar="DIR")
    v.add_argument("--quick", action="store_true", help="skip hashing every root block")
    add_json_flag(v)
    v.set_defaults(func=_verify)

    p = sub.add_parser("pcrs", help="the PCR values after booting this image (golden values)")
    p.add_argument("image")
    p.add_argument("--slot", default="a", help="the slot booted (default a)")
    add_json_flag(p)
    p.set_defaults(func=_pcrs)

    g = sub.add_parser(
        "golden", help="signed golden values (PCRs, measured components) for attestation"
    )
    g.add_argument("image")
    g.add_argument("--keys", required=True, metavar="DIR", help="from `bastion keys init`")
    g.add_argument("--slot", default="a", help="the slot booted (default a)")
    g.add_argument("-o", "--output", required=True, metavar="FILE")
    add_passphrase_flag(g)
    add_json_flag(g)
    g.set_defaults(func=_golden)
