"""``bastion uki build|sign|verify``: unified kernel images and their Authenticode signatures.

``uki build --stub STUB --linux K [--initrd I] [--cmdline F] [--osrel F] [--pcrpkey F]
[--pcrsig F] [--uname F] [--pcr-key KEY [--phase P]...] -o OUT`` appends the sections to
the systemd stub;
``uki sign --key KEY --cert CERT [--chain CERT...] [--append] UKI [-o OUT]`` adds an
Authenticode signature (sbsign-compatible); ``uki verify --db CERT... UKI`` checks one
against Secure Boot db certificates (and, with ``--pcr-pubkey``, its ``.pcrsig``);
``uki pcrs UKI`` predicts PCR 11. With ``--pcr-key``,
``build`` also adds ``.pcrpkey`` and a ``.pcrsig`` signed for each ``--phase`` (default:
systemd-measure's four). Any PE image can be signed and verified.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.build.uki import UkiInputs, build_uki, with_pcr_signature
from bastion.cli._common import (
    about_file,
    add_json_flag,
    add_passphrase_flag,
    emit,
    passphrase_source,
)
from bastion.errors import BastionError, ConfigError
from bastion.formats.uki import uki_sections
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import CERT_MAX_SIZE, PE_MAX_IMAGE_SIZE
from bastion.trust.authenticode import sign_pe, verify_pe
from bastion.trust.keys import load_public_key_file, open_signer
from bastion.trust.pcr11 import DEFAULT_PHASES, predict_pcr11, verify_pcrsig
from bastion.trust.pki import load_certificates
from bastion.trust.signer import SignatureScheme

DEFAULT_STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"


def _certs(paths: list[str]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for path in paths:
        out += load_certificates(read_bounded(path, CERT_MAX_SIZE, "certificate"), what=path)
    return out


def _read(path: str | None, what: str) -> bytes | None:
    return None if path is None else read_bounded(path, PE_MAX_IMAGE_SIZE, what)


def _build(args: argparse.Namespace) -> int:
    linux = read_bounded(args.linux, PE_MAX_IMAGE_SIZE, "kernel")
    inputs = UkiInputs(
        linux=linux,
        osrel=_read(args.osrel, "os-release"),
        cmdline=_read(args.cmdline, "command line"),
        initrd=_read(args.initrd, "initrd"),
        pcrpkey=_read(args.pcrpkey, "PCR public key"),
        pcrsig=_read(args.pcrsig, "PCR signature"),
        uname=_read(args.uname, "uname"),
    )
    if args.pcr_key:
        pcr_signer = open_signer(
            args.pcr_key,
            passphrase=passphrase_source(args, args.pcr_key),
            scheme=SignatureScheme.RSA_PKCS1V15_SHA256,
        )
        inputs = with_pcr_signature(inputs, pcr_signer, args.phase or DEFAULT_PHASES)
    uki = build_uki(read_bounded(args.stub, PE_MAX_IMAGE_SIZE, "stub"), inputs)
    atomic_write(Path(args.output), uki)
    sizes = {name: len(content) for name, content in uki_sections(uki).items()}
    emit(
        args,
        f"built {args.output} ({len(uki)} bytes): "
        + " ".join(f"{n}={s}" for n, s in sizes.items()),
        {"output": args.output, "size": len(uki), "sections": sizes},
    )
    return 0


def _sign(args: argparse.Namespace) -> int:
    cert, *chain = _certs([args.cert, *args.chain])
    scheme = (
        SignatureScheme.RSA_PKCS1V15_SHA256
        if isinstance(cert.public_key(), rsa.RSAPublicKey)
        else None
    )
    signer = open_signer(args.key, passphrase=passphrase_source(args, args.key), scheme=scheme)
    image = read_bounded(args.image, PE_MAX_IMAGE_SIZE, "PE image")
    signed = sign_pe(image, signer, cert, chain=chain, append=args.append)
    out = Path(args.output or args.image)
    atomic_write(out, signed)
    emit(
        args,
        f"signed {args.image} (key {signer.key_id[:16]}...) -> {out}",
        {"output": str(out), "key_id": signer.key_id, "size": len(signed)},
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    data = read_bounded(args.image, PE_MAX_IMAGE_SIZE, "PE image")
    try:
        result = verify_pe(data, _certs(args.db))
    except BastionError as exc:
        named = about_file(exc, args.image)
        if named is exc:
            raise
        raise named from exc
    signer = result.signer.subject.rfc4514_string()
    phases: list[str] | None = None
    if args.pcr_pubkey:
        key = load_public_key_file(args.pcr_pubkey)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ConfigError(f"{args.pcr_pubkey}: a .pcrsig key is RSA")
        phases = verify_pcrsig(uki_sections(data), key, args.phase or DEFAULT_PHASES)
    emit(
        args,
        f"OK: {args.image} signature #{result.index} by {signer} ({result.hash_name} "
        f"{result.digest.hex()})"
        + ("" if phases is None else f"; .pcrsig signs phases {', '.join(phases)}"),
        {
            "pcrsig_phases": phases,
            "ok": True,
            "index": result.index,
            "signer": signer,
            "anchor": result.anchor.subject.rfc4514_string(),
            "hash": result.hash_name,
            "digest": result.digest.hex(),
            "failures": [{"index": i, "error": m} for i, m in result.failures],
        },
    )
    return 0


def _pcrs(args: argparse.Namespace) -> int:
    sections = uki_sections(read_bounded(args.image, PE_MAX_IMAGE_SIZE, "UKI"))
    phases = args.phase or ["", *DEFAULT_PHASES]
    values = {phase: predict_pcr11(sections, phase).hex() for phase in phases}
    emit(
        args,
        "\n".join(f"11:sha256={v}  {p or '(after the stub)'}" for p, v in values.items()),
        {"pcr": 11, "bank": "sha256", "phases": values},
    )
    return 0


def register(subparsers: Any) -> None:
    """Add the ``uki`` group."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "uki", help="build, sign and verify unified kernel images (Authenticode)"
    )
    sub = parser.add_subparsers(dest="uki_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)
    p = sub.add_parser("build", help="append UKI sections to the systemd EFI stub")
    p.add_argument("--stub", default=DEFAULT_STUB, metavar="STUB")
    p.add_argument("--linux", required=True, metavar="KERNEL")
    for name in ("initrd", "cmdline", "osrel", "pcrpkey", "pcrsig", "uname"):
        p.add_argument(f"--{name}", metavar="FILE", help=f"contents of the .{name} section")
    p.add_argument(
        "--pcr-key", metavar="KEY", help="RSA key URI: add .pcrpkey and a signed .pcrsig"
    )
    p.add_argument("--phase", action="append", metavar="PATH", help="phase path to sign")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_build)

    p = sub.add_parser("pcrs", help="predict PCR 11 (systemd-stub 252) for a UKI")
    p.add_argument("--phase", action="append", metavar="PATH")
    p.add_argument("image", metavar="UKI")
    add_json_flag(p)
    p.set_defaults(func=_pcrs)

    p = sub.add_parser("sign", help="add an Authenticode signature to a PE image")
    p.add_argument("--key", required=True, metavar="KEY", help="key URI (file:PATH or tpm:...)")
    p.add_argument("--cert", required=True, metavar="CERT", help="signer certificate (PEM/DER)")
    p.add_argument("--chain", action="append", default=[], metavar="CERT")
    p.add_argument("--append", action="store_true", help="keep existing signatures")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of in place")
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_sign)

    p = sub.add_parser("verify", help="verify a PE image's Authenticode signatures against db")
    p.add_argument("--db", action="append", required=True, metavar="CERT")
    p.add_argument(
        "--pcr-pubkey", metavar="PEM", help="also verify the UKI's .pcrsig with this RSA key"
    )
    p.add_argument("--phase", action="append", metavar="PATH", help="phase paths to accept")
    p.add_argument("image", metavar="IMAGE")
    add_json_flag(p)
    p.set_defaults(func=_verify)
