"""``bastion release``: build and verify signed update bundles (RAUC ``verity`` format).

``release build --root IMG [--uki UKI] --compatible C --version V --key URI --cert PEM
[--chain PEM] -o OUT.raucb`` packs the images with mksquashfs, appends the dm-verity
tree and the CMS signature (docs/updates.md). ``release verify --keyring PEM BUNDLE``
checks the signature against the keyring and every payload block. The work is done by
:mod:`bastion.build.bundle` and :mod:`bastion.trust.bundle`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cryptography import x509

from bastion.build.bundle import BundleImage, build_bundle
from bastion.cli._common import add_json_flag, add_passphrase_flag, emit, passphrase_source
from bastion.errors import FormatError, NotFoundError
from bastion.io.files import read_bounded
from bastion.limits import CERT_CHAIN_MAX_DEPTH, CERT_MAX_SIZE
from bastion.trust.bundle import load_keyring, verify_bundle
from bastion.trust.keys import open_signer


def _certs(path: str, what: str) -> list[x509.Certificate]:
    certs = load_keyring(read_bounded(path, CERT_MAX_SIZE * CERT_CHAIN_MAX_DEPTH, what))
    if not certs:
        raise FormatError(f"{what} {path!r} holds no certificate")
    return certs


def _image(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"{what} {path!r} is not a file")
    return p


def _build(args: argparse.Namespace) -> int:
    images = [BundleImage(args.root_slot, _image(args.root, "root image"), "rootfs.img")]
    if args.uki:
        images.append(BundleImage(args.uki_slot, _image(args.uki, "UKI"), "uki.efi"))
    cert = _certs(args.cert, "certificate")[0]
    chain = _certs(args.chain, "chain") if args.chain else []
    signer = open_signer(args.key, passphrase=passphrase_source(args, args.key))
    built = build_bundle(
        Path(args.output),
        images,
        compatible=args.compatible,
        version=args.version,
        description=args.description,
        build=args.build,
        signer=signer,
        certificate=cert,
        chain=chain,
        epoch=args.epoch,
    )
    m = built.manifest
    emit(
        args,
        f"bundle {built.path} ({built.bundle_size} bytes): {m.compatible} {m.version}, "
        f"verity root {m.verity_hash}",
        {
            "output": str(built.path),
            "compatible": m.compatible,
            "version": m.version,
            "verity_hash": m.verity_hash,
            "verity_salt": m.verity_salt,
            "verity_size": m.verity_size,
            "payload_size": built.payload_size,
            "signature_size": built.signature_size,
            "bundle_size": built.bundle_size,
            "images": [
                {
                    "slotclass": i.slotclass,
                    "filename": i.filename,
                    "sha256": i.sha256,
                    "size": i.size,
                }
                for i in m.images
            ],
        },
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    keyring = _certs(args.keyring, "keyring")
    path = _image(args.bundle, "bundle")
    with path.open("rb") as f:
        v = verify_bundle(f, keyring)
    m = v.manifest
    emit(
        args,
        f"bundle {path} verified: {m.compatible} {m.version}, signed by "
        f"{v.signer.subject.rfc4514_string()}",
        {
            "compatible": m.compatible,
            "version": m.version,
            "signer": v.signer.subject.rfc4514_string(),
            "anchor": v.anchor.subject.rfc4514_string(),
            "verity_hash": m.verity_hash,
            "images": [
                {
                    "slotclass": i.slotclass,
                    "filename": i.filename,
                    "sha256": i.sha256,
                    "size": i.size,
                }
                for i in m.images
            ],
        },
    )
    return 0


def register(subparsers: Any) -> None:
    """Add ``release build`` and ``release verify``."""
    release: argparse.ArgumentParser = subparsers.add_parser(
        "release", help="build and verify signed update bundles (RAUC verity format)"
    )
    sub = release.add_subparsers(dest="release_command", required=True)
    p = sub.add_parser("build", help="pack a root image (and UKI) into a signed bundle")
    p.add_argument("--root", required=True, metavar="IMG", help="root filesystem image")
    p.add_argument("--root-slot", default="rootfs", metavar="CLASS", help="slot class (rootfs)")
    p.add_argument("--uki", metavar="UKI", help="unified kernel image to carry as well")
    p.add_argument("--uki-slot", default="efi", metavar="CLASS", help="slot class (efi)")
    p.add_argument("--compatible", required=True, help="RAUC compatible string of the devices")
    p.add_argument("--version", required=True, help="release version")
    p.add_argument("--description")
    p.add_argument("--build", help="build id")
    p.add_argument(
        "--key", required=True, metavar="URI", help="file:PATH[?passphrase-env=VAR] or tpm:..."
    )
    p.add_argument("--cert", required=True, metavar="PEM", help="certificate of the key")
    p.add_argument("--chain", metavar="PEM", help="intermediate certificates to carry")
    p.add_argument("--epoch", type=int, default=1, help="SOURCE_DATE_EPOCH for the squashfs")
    p.add_argument("-o", "--output", required=True, metavar="OUT.raucb")
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_build)
    p = sub.add_parser("verify", help="verify a bundle's signature and payload")
    p.add_argument("--keyring", required=True, metavar="PEM", help="trusted certificate(s)")
    p.add_argument("bundle", metavar="BUNDLE")
    add_json_flag(p)
    p.set_defaults(func=_verify)
