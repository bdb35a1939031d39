"""``bastion release``: build, verify and publish signed update bundles.

``release build --root IMG [--uki UKI] --compatible C --version V --key URI --cert PEM
[--chain PEM] [--product P --svn N --hardware H ...] -o OUT.raucb`` packs the images
with mksquashfs, appends the dm-verity tree and the CMS signature (docs/updates.md);
the release fields go into the signed manifest's ``[meta.bastion]``. With
``--golden-image DISK --keys DIR`` the image's signed golden values (``bastion image
golden``'s code, signed with the key set's image key: the product key) go into the
bundle, or with ``--golden FILE`` a statement signed elsewhere (ADR 0037); the UKI
packed must be the one they describe, their version and SVN the release's.
``release verify`` and ``release show`` display the golden values a bundle carries.
``release verify --keyring PEM BUNDLE`` checks the signature against the keyring and
every payload block. ``release publish BUNDLE --repo DIR --channel C`` verifies the
bundle, then lists it in the product's TUF role with the manifest fields as custom
metadata; ``release list|show`` read the repository. The work is done by
:mod:`bastion.build.bundle`, :mod:`bastion.trust.bundle` and
:mod:`bastion.build.tuf_repo`.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509

from bastion.build.bundle import BundleImage, build_bundle
from bastion.build.tuf_repo import TufRepository, renew
from bastion.cli._common import add_json_flag, add_passphrase_flag, emit, passphrase_source
from bastion.errors import ConfigError, FormatError, NotFoundError
from bastion.io.files import read_bounded
from bastion.limits import ATTEST_GOLDEN_MAX_SIZE, CERT_CHAIN_MAX_DEPTH, CERT_MAX_SIZE
from bastion.trust.bundle import bundle_golden, load_keyring, verify_bundle
from bastion.trust.golden import GoldenValues, golden_digest, peek_golden, sign_golden
from bastion.trust.keys import open_signer
from bastion.trust.tuf import ReleaseTarget, release_custom, release_meta


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


def _golden_statement(
    args: argparse.Namespace, uki_dir: Path
) -> tuple[bytes | None, GoldenValues | None, Path | None]:
    """The golden statement to carry, its (unverified: the server verifies) values, and
    the UKI file to pack when it came from the image."""
    if args.golden and args.golden_image:
        raise ConfigError("give --golden FILE or --golden-image DISK, not both")
    uki_path = None
    if args.golden_image:
        if not args.keys:
            raise ConfigError("--golden-image needs --keys DIR (the key set with the image key)")
        from bastion.cli.image import slot_golden
        from bastion.trust.keyset import KeySet

        golden, uki = slot_golden(_image(args.golden_image, "image"), args.keys, args.golden_slot)
        if args.uki:
            if _image(args.uki, "UKI").read_bytes() != uki:
                raise ConfigError(
                    f"--uki {args.uki} is not slot {args.golden_slot}'s UKI of "
                    f"{args.golden_image}: the golden values would describe another kernel"
                )
        else:
            uki_path = uki_dir / "uki.efi"
            uki_path.write_bytes(uki)
        signer = KeySet.load(args.keys, passphrase_source(args, args.keys)).signer("image")
        statement = sign_golden(golden, signer)
    elif args.golden:
        statement = read_bounded(args.golden, ATTEST_GOLDEN_MAX_SIZE, "golden statement")
        golden = peek_golden(statement)
    else:
        return None, None, None
    if golden.version != args.version:
        raise ConfigError(
            f"the golden values are for version {golden.version!r}, the release is {args.version!r}"
        )
    if args.svn is not None and golden.security_version != args.svn:
        raise ConfigError(
            f"the golden values have security version {golden.security_version}, "
            f"--svn is {args.svn}"
        )
    return statement, golden, uki_path


def _golden_json(statement: bytes, golden: GoldenValues) -> dict[str, Any]:
    return {
        "sha256": golden_digest(statement),
        "version": golden.version,
        "security_version": golden.security_version,
        "pcrs": {str(i): v.hex() for i, v in sorted(golden.pcrs.items())},
        "components": {k: v.hex() for k, v in sorted(golden.components.items())},
    }


def _golden_text(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return "\ngolden values: none"
    pcrs = ", ".join(f"{i}={v[:16]}..." for i, v in doc["pcrs"].items())
    return (
        f"\ngolden values {doc['sha256'][:16]}... (not verified here: the server checks the "
        f"product key): version {doc['version']}, security version "
        f"{doc['security_version']}, PCRs {pcrs}, {len(doc['components'])} components"
    )


def _build(args: argparse.Namespace) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bastion-release-") as tmp:
        return _build_in(args, Path(tmp))


def _build_in(args: argparse.Namespace, tmp: Path) -> int:
    statement, golden, image_uki = _golden_statement(args, tmp)
    images = [BundleImage(args.root_slot, _image(args.root, "root image"), "rootfs.img")]
    if args.uki:
        images.append(BundleImage(args.uki_slot, _image(args.uki, "UKI"), "uki.efi"))
    elif image_uki is not None:
        images.append(BundleImage(args.uki_slot, image_uki, "uki.efi"))
    cert = _certs(args.cert, "certificate")[0]
    chain = _certs(args.chain, "chain") if args.chain else []
    signer = open_signer(args.key, passphrase=passphrase_source(args, args.key))
    meta = []
    golden_pcrs = _golden(args.golden_pcr)
    if golden is not None and not golden_pcrs:
        golden_pcrs = {i: v.hex() for i, v in golden.pcrs.items()}
    if args.product or args.svn is not None or args.hardware:
        if not (args.product and args.svn is not None and args.hardware):
            raise ConfigError("release fields need --product, --svn and --hardware together")
        meta.append(
            release_meta(
                product=args.product,
                svn=args.svn,
                hardware=args.hardware,
                min_base_version=args.min_base_version,
                golden_pcrs=golden_pcrs,
            )
        )
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
        meta=meta,
        golden=statement,
    )
    m = built.manifest
    gdoc = _golden_json(statement, golden) if statement and golden else None
    emit(
        args,
        f"bundle {built.path} ({built.bundle_size} bytes): {m.compatible} {m.version}, "
        f"verity root {m.verity_hash}" + _golden_text(gdoc),
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
            "golden": gdoc,
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
        statement = bundle_golden(f, v)
    m = v.manifest
    gdoc = _golden_json(statement, peek_golden(statement)) if statement else None
    emit(
        args,
        f"bundle {path} verified: {m.compatible} {m.version}, signed by "
        f"{v.signer.subject.rfc4514_string()}" + _golden_text(gdoc),
        {
            "golden": gdoc,
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


def _golden(values: list[str] | None) -> dict[int, str]:
    out: dict[int, str] = {}
    for value in values or []:
        pcr, sep, digest = value.partition("=")
        if not sep or not pcr.isdigit():
            raise ConfigError(f"--golden-pcr {value!r}: expected PCR=HEX")
        out[int(pcr)] = digest.lower()
    return out


def _release_json(r: ReleaseTarget) -> dict[str, Any]:
    return {
        "path": r.path,
        "length": r.length,
        "sha256": r.sha256,
        "version": r.version,
        "svn": r.svn,
        "product": r.product,
        "hardware": list(r.hardware),
        "channel": r.channel,
        "min_base_version": r.min_base_version,
        "custom": dict(r.custom),
    }


def _publish(args: argparse.Namespace) -> int:
    keyring = _certs(args.keyring, "keyring")
    path = _image(args.bundle, "bundle")
    with path.open("rb") as f:
        verified = verify_bundle(f, keyring)
    fallback = {
        "product": args.product,
        "svn": args.svn,
        "hardware": args.hardware,
        "min_base_version": args.min_base_version,
    }
    custom = release_custom(verified.manifest, args.channel, fallback)
    repo = TufRepository(Path(args.repo))
    signers = [open_signer(k, passphrase=passphrase_source(args, k)) for k in args.key]
    now = dt.datetime.now(dt.UTC)
    written, target = repo.add_release(
        product=custom["product"],
        channel=args.channel,
        bundle=path,
        custom=custom,
        signers=signers,
        now=now,
    )
    renewed = None
    if written.published and args.snapshot_key and args.timestamp_key:
        snap = open_signer(args.snapshot_key, passphrase=passphrase_source(args, args.snapshot_key))
        ts = open_signer(args.timestamp_key, passphrase=passphrase_source(args, args.timestamp_key))
        renewed = [r.version for r in renew(repo, snap, ts, now)]
    state = (
        ("published" if renewed else "signed (devices see it after `bastion tuf renew`)")
        if written.published
        else "staged (needs `bastion tuf sign`)"
    )
    emit(
        args,
        f"release {target.path}: {custom['product']} {custom['version']} svn {custom['svn']} "
        f"on {args.channel}, {custom['product']} v{written.version} {state}",
        {
            "path": target.path,
            "length": target.length,
            "sha256": target.hashes["sha256"],
            "role": written.role,
            "role_version": written.version,
            "published": written.published,
            "snapshot_timestamp": renewed,
            "custom": custom,
        },
    )
    return 0


def _selected(args: argparse.Namespace) -> list[ReleaseTarget]:
    releases = TufRepository(Path(args.repo)).releases()
    return [
        r
        for r in releases
        if (not getattr(args, "product", None) or r.product == args.product)
        and (not getattr(args, "channel", None) or r.channel == args.channel)
    ]


def _list(args: argparse.Namespace) -> int:
    releases = _selected(args)
    lines = [
        f"{r.path}  {r.version}  svn {r.svn}  {r.channel}  {','.join(r.hardware)}  {r.length} B"
        for r in releases
    ]
    emit(args, "\n".join(lines) or "no releases", [_release_json(r) for r in releases])
    return 0


def _show(args: argparse.Namespace) -> int:
    found = [r for r in TufRepository(Path(args.repo)).releases() if r.path == args.path]
    if not found:
        raise NotFoundError(f"release {args.path!r} is not in {args.repo}")
    r = found[0]
    data = _release_json(r)
    if args.keyring:
        folder, _, name = r.path.rpartition("/")
        targets = TufRepository(Path(args.repo)).targets_dir
        bundle = targets.joinpath(*folder.split("/"), f"{r.sha256}.{name}")
        if not bundle.resolve().is_relative_to(targets.resolve()) or not bundle.is_file():
            raise NotFoundError(f"release {r.path!r}: its bundle is not in {targets}")
        with bundle.open("rb") as f:
            verified = verify_bundle(f, _certs(args.keyring, "keyring"))
            statement = bundle_golden(f, verified)
        data["golden"] = _golden_json(statement, peek_golden(statement)) if statement else None
    text = (
        "\n".join(f"{k}: {v}" for k, v in data.items() if k != "custom")
        + "\n"
        + "\n".join(f"custom.{k}: {v}" for k, v in sorted(r.custom.items()))
        + (_golden_text(data["golden"]) if "golden" in data else "")
    )
    emit(args, text, data)
    return 0


def _release_field_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--product", help="product name (the TUF role releases go to)")
    p.add_argument("--svn", type=int, help="security version (devices never go below it)")
    p.add_argument("--hardware", action="append", help="hardware it runs on (repeat)")
    p.add_argument("--min-base-version", help="oldest version it may be installed over")


def register(subparsers: Any) -> None:
    """Add ``release build|verify|publish|list|show``."""
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
    _release_field_flags(p)
    p.add_argument("--golden-pcr", action="append", metavar="PCR=HEX", help="golden PCR value")
    p.add_argument(
        "--golden-image",
        metavar="DISK",
        help="carry the signed golden values of this EFI disk image's slot UKI (needs --keys)",
    )
    p.add_argument("--keys", metavar="DIR", help="key set whose image key signs golden values")
    p.add_argument("--golden-slot", default="a", help="the image slot booted (default a)")
    p.add_argument(
        "--golden", metavar="FILE", help="carry this signed golden statement (image golden)"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.raucb")
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_build)
    p = sub.add_parser("verify", help="verify a bundle's signature and payload")
    p.add_argument("--keyring", required=True, metavar="PEM", help="trusted certificate(s)")
    p.add_argument("bundle", metavar="BUNDLE")
    add_json_flag(p)
    p.set_defaults(func=_verify)

    p = sub.add_parser("publish", help="list a verified bundle in the TUF repository")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--repo", required=True, metavar="DIR", help="TUF repository (tuf init)")
    p.add_argument("--channel", required=True, help="release channel (stable, beta, ...)")
    p.add_argument("--keyring", required=True, metavar="PEM", help="release certificate(s)")
    p.add_argument(
        "--key", action="append", required=True, metavar="URI", help="product role key(s)"
    )
    p.add_argument("--snapshot-key", metavar="URI", help="online snapshot key (publish now)")
    p.add_argument("--timestamp-key", metavar="URI", help="online timestamp key (publish now)")
    _release_field_flags(p)
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_publish)

    p = sub.add_parser("list", help="releases in the TUF repository")
    p.add_argument("--repo", required=True, metavar="DIR")
    p.add_argument("--product")
    p.add_argument("--channel")
    add_json_flag(p)
    p.set_defaults(func=_list)

    p = sub.add_parser("show", help="one release and its metadata")
    p.add_argument("path", metavar="PATH", help="target path: PRODUCT/CHANNEL/NAME")
    p.add_argument("--repo", required=True, metavar="DIR")
    p.add_argument("--keyring", metavar="PEM", help="verify the bundle and show its golden values")
    add_json_flag(p)
    p.set_defaults(func=_show)

    p = sub.add_parser(
        "server", help="releases on the fleet server (upload, register, target, ...)"
    )
    srv = p.add_subparsers(dest="server_command", required=True, metavar="COMMAND")
    from bastion.cli import _release_server  # publish, register, list, show, target, ...

    _release_server.register(srv)
