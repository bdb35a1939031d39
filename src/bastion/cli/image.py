"""``bastion image build|inspect|verify|pcrs``: signed A/B disk images.

Thin: parses flags, loads the product key set (``bastion keys init``), calls
:mod:`bastion.build.efi_image`, prints text or ``--json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.build.disk import BLS_TYPE2_DIR, BOOT_PATH, SecureBootSigner
from bastion.build.efi_image import EfiImageKeys, build_efi_image
from bastion.build.fs import FsType
from bastion.build.image import DEFAULT_DATA_SIZE, ImageSpec
from bastion.cli._common import add_json_flag, add_passphrase_flag, emit, passphrase_source
from bastion.device.platform.esp_image import ImageEsp
from bastion.errors import ConfigError, FormatError, NotFoundError, SignatureError
from bastion.formats import gpt
from bastion.formats.efivars import encode_signature_lists
from bastion.formats.image import is_slot_entry
from bastion.io.files import read_bounded
from bastion.limits import IMAGE_INPUT_MAX_SIZE
from bastion.storage.disk_image import DiskImage, read_layout
from bastion.trust.golden import GoldenValues
from bastion.trust.image import (
    ImageTrust,
    predict_efi_pcrs,
    verify_efi_boot_files,
    verify_efi_root,
    verify_image_signature,
)
from bastion.trust.keys import PassphraseCallback
from bastion.trust.keyset import KeySet
from bastion.trust.secureboot import certificate_list, owner_guid
from bastion.trust.signer import SignatureScheme


def load_efi_image_keys(folder: str, passphrase: PassphraseCallback | None = None) -> EfiImageKeys:
    """The signers an EFI image build needs: image, Secure Boot db, PCR policy."""
    ks = KeySet.load(folder, passphrase)
    rsa_scheme = SignatureScheme.RSA_PKCS1V15_SHA256
    return EfiImageKeys(
        image=ks.signer("image"),
        secure_boot=SecureBootSigner(
            ks.signer("secureboot-db", scheme=rsa_scheme), ks.certificate("secureboot-db")
        ),
        pcr=ks.signer("pcr", scheme=rsa_scheme),
    )


def secure_boot_variables(folder: str) -> dict[str, bytes]:
    """PK, KEK and db of a key set as the signature lists firmware holds once enrolled
    (the ``.esl`` files of ``bastion secureboot enrol``: one owner GUID, one certificate
    each)."""
    ks = KeySet.load(folder)
    pk = ks.certificate("secureboot-pk")
    owner = owner_guid(pk)
    return {
        name: encode_signature_lists([certificate_list(owner, ks.certificate(role))])
        for name, role in (("PK", "secureboot-pk"), ("KEK", "secureboot-kek"),
                           ("db", "secureboot-db"))
    }  # fmt: skip


def image_esp(path: Path) -> ImageEsp | None:
    """The ESP of an image file (None for a disk without one)."""
    for part in read_layout(path).partitions:
        if part.type_guid == gpt.TYPE_ESP:
            return ImageEsp(path, part.offset)
    return None


def load_image_trust(folder: str) -> ImageTrust:
    """The public side of a product key set folder."""
    ks = KeySet.load(folder)
    return ImageTrust(
        platform_root=ks.verifier("platform-root"),
        image=ks.verifier("image"),
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
    return read_bounded(path, IMAGE_INPUT_MAX_SIZE, what)


def _build(args: argparse.Namespace) -> int:
    try:
        fs = FsType(args.fs)
    except ValueError:
        raise ConfigError(f"--fs {args.fs!r}: expected ext4, squashfs or erofs") from None
    spec = ImageSpec(
        rootfs=Path(args.rootfs),
        kernel=_read(args.kernel, "kernel"),
        initrd=_read(args.initrd, "initrd") if args.initrd else b"",
        cmdline=args.cmdline or "",
        version=args.version,
        security_version=args.security_version,
        fs=fs,
        data_size=args.data_size,
        root_size=args.root_size,
        epoch=args.epoch,
    )
    efi_keys = load_efi_image_keys(args.keys, passphrase_source(args, args.keys))
    efi = build_efi_image(spec, efi_keys, Path(args.output))
    data = dict(efi.metadata, path=str(efi.path), signature=str(efi.path) + ".sig")
    emit(
        args,
        f"built {efi.path} ({efi.size} bytes, ESP + A/B + data)\n"
        f"  sha256     {efi.sha256.hex()}\n"
        f"  root hash  {efi.root_hash.hex()}\n"
        f"  entry      \\EFI\\Linux\\{efi.entry} (signed UKI, signed systemd-boot)\n"
        f"  signature  {efi.path}.sig",
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
    esp = image_esp(path)
    if esp is not None:
        doc["esp"] = {
            "loader": esp.list("EFI/BOOT"),
            "entries": esp.list(BLS_TYPE2_DIR),
        }
    return doc


def _inspect(args: argparse.Namespace) -> int:
    doc = inspect_image(Path(args.image))
    lines = [f"{args.image}: GPT disk {doc['disk_guid']}, {doc['size']} bytes"]
    for p in doc["partitions"]:
        lines.append(f"  {p['name']:<18} {p['type']}  {p['size'] // 1024:>9} KiB  uuid {p['uuid']}")
    for name in doc.get("esp", {}).get("entries", []):
        lines.append(f"  esp: EFI/Linux/{name}")
    emit(args, "\n".join(lines), doc)
    return 0


def _slot_uki(esp: ImageEsp, slot: str) -> tuple[str, bytes]:
    """The ESP file name and bytes of ``slot``'s UKI (counted or blessed)."""
    for name in sorted(esp.list(BLS_TYPE2_DIR), reverse=True):
        if is_slot_entry(name, slot):
            return name, esp.read(f"{BLS_TYPE2_DIR}/{name}")
    raise NotFoundError(
        f"the ESP has no UKI for slot {slot} ({BLS_TYPE2_DIR}/bastion-*-{slot}.efi)"
    )


def _verify_efi(args: argparse.Namespace, esp: ImageEsp) -> int:
    ks = KeySet.load(args.keys)
    meta = verify_image_signature(DiskImage(Path(args.image)), load_image_trust(args.keys))
    ukis = {n: esp.read(f"{BLS_TYPE2_DIR}/{n}") for n in esp.list(BLS_TYPE2_DIR)}
    pcr_key = ks.public_key("pcr")
    if not isinstance(pcr_key, rsa.RSAPublicKey):
        raise ConfigError("the key set's pcr key is not RSA")
    entries = verify_efi_boot_files(
        esp.read(BOOT_PATH), ukis, [ks.certificate("secureboot-db")], pcr_key
    )
    layout = read_layout(Path(args.image))
    for doc in entries.values():
        root_hash = bytes.fromhex(str(doc["root_hash"] or ""))
        want = gpt.verity_partition_uuids(root_hash)[0]
        if not any(p.part_guid == want for p in layout.partitions):
            raise SignatureError(f"no root partition carries the PARTUUID of {root_hash.hex()}")
        if not args.quick:
            doc["root"] = verify_efi_root(DiskImage(Path(args.image)), layout, root_hash)
    doc_all = dict(meta, entries=entries)
    emit(
        args,
        f"{args.image}: OK (image signature, systemd-boot and {len(entries)} UKI(s) against "
        f"db, .pcrsig{', every root block' if not args.quick else ''})",
        doc_all,
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    return _verify_efi(args, _esp_of(Path(args.image)))


def _esp_of(path: Path) -> ImageEsp:
    esp = image_esp(path)
    if esp is None:
        raise FormatError(f"{path}: no EFI System Partition (not a bastion disk image)")
    return esp


def _pcrs(args: argparse.Namespace) -> int:
    if args.slot not in ("a", "b"):
        raise ConfigError(f"--slot {args.slot!r}: expected a or b")
    esp = _esp_of(Path(args.image))
    if not args.keys:
        raise ConfigError("an EFI image's PCR 7 depends on the Secure Boot keys: give --keys")
    _name, uki = _slot_uki(esp, args.slot)
    pcrs = predict_efi_pcrs(
        esp.read(BOOT_PATH),
        uki,
        secure_boot_variables(args.keys),
    )
    data = {"bank": "sha256", "slot": args.slot, "pcrs": {str(k): v.hex() for k, v in pcrs.items()}}
    text = "\n".join(f"sha256:{k:<2} {v.hex()}" for k, v in pcrs.items())
    emit(args, text, data)
    return 0


def slot_golden(image: Path, keys: str, slot: str) -> tuple[GoldenValues, bytes]:
    """The golden values of booting ``slot`` of the signed EFI disk ``image`` (its
    signature checked with the key set ``keys``), and that slot's UKI bytes."""
    from bastion.build.golden import golden_values_efi

    if slot not in ("a", "b"):
        raise ConfigError(f"--slot {slot!r}: expected a or b")
    esp = _esp_of(image)
    _name, uki = _slot_uki(esp, slot)
    golden = golden_values_efi(
        image,
        load_image_trust(keys),
        loader=esp.read(BOOT_PATH),
        uki=uki,
        variables=secure_boot_variables(keys),
    )
    return golden, uki


def _golden(args: argparse.Namespace) -> int:
    from bastion.trust.golden import sign_golden

    golden, _uki = slot_golden(Path(args.image), args.keys, args.slot)
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
    b.add_argument("--version", required=True)
    b.add_argument("--security-version", type=int, required=True, metavar="N")
    b.add_argument("--keys", required=True, metavar="DIR", help="from `bastion keys init`")
    b.add_argument("--fs", default="ext4", help="ext4 (default), squashfs or erofs")
    b.add_argument(
        "--data-size",
        type=size_arg,
        default=DEFAULT_DATA_SIZE,
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
    p.add_argument("--keys", metavar="DIR", help="the key set (EFI images: Secure Boot keys)")
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
