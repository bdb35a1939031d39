"""``bastion module sign|verify``: Linux kernel module signatures (sign-file compatible).

``module sign --key KEY --cert CERT [--hash sha256] [--key-id] MODULE [-o OUT]`` appends
the signature exactly as the kernel's ``scripts/sign-file`` does (in place without
``-o``; ``--key-id`` is sign-file ``-k``); RSA and EC (P-256 with sha256, P-384 with
sha384) keys. ``module verify --cert CERT MODULE`` checks one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bastion.cli._common import add_json_flag, add_passphrase_flag, emit, passphrase_source
from bastion.errors import ConfigError
from bastion.formats.modsig import HASH_OIDS, sign_module, verify_module
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import CERT_MAX_SIZE, GiB
from bastion.trust.keys import open_signer
from bastion.trust.pki import load_certificates
from bastion.trust.signer import SignatureScheme

#: largest module bastion reads (the kernel's own bound is far lower in practice)
MODULE_MAX_SIZE = 1 * GiB


def _cert(path: str):  # type: ignore[no-untyped-def]
    return load_certificates(read_bounded(path, CERT_MAX_SIZE, "certificate"), what=path)[0]


_EC_SCHEMES = {
    ("secp256r1", "sha256"): SignatureScheme.ECDSA_P256_SHA256,
    ("secp384r1", "sha384"): SignatureScheme.ECDSA_P384_SHA384,
}


def _scheme(cert, hash_name: str) -> SignatureScheme:  # type: ignore[no-untyped-def]
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        scheme = _EC_SCHEMES.get((key.curve.name, hash_name))
        if scheme is None:
            pairs = ", ".join(f"{c} with {h}" for c, h in _EC_SCHEMES)
            raise ConfigError(f"EC module keys sign as {pairs}; got {key.curve.name}/{hash_name}")
        return scheme
    return SignatureScheme(f"rsa-pkcs1v15-{hash_name}")


def _sign(args: argparse.Namespace) -> int:
    cert = _cert(args.cert)
    signer = open_signer(
        args.key,
        passphrase=passphrase_source(args, args.key),
        scheme=_scheme(cert, args.hash),
    )
    module = read_bounded(args.module, MODULE_MAX_SIZE, "module")
    signed = sign_module(module, cert, signer.sign, args.hash, use_key_id=args.key_id)
    out = Path(args.output or args.module)
    atomic_write(out, signed, mode=Path(args.module).stat().st_mode & 0o777)
    emit(
        args,
        f"signed {args.module} ({args.hash}, key {signer.key_id[:16]}...) -> {out}",
        {"output": str(out), "hash": args.hash, "key_id": signer.key_id, "size": len(signed)},
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    cert = _cert(args.cert)
    signed = verify_module(read_bounded(args.module, MODULE_MAX_SIZE, "module"), cert)
    cms = signed.cms()
    emit(
        args,
        f"OK: {args.module} signed ({cms.hash_name}) by {cert.subject.rfc4514_string()}",
        {
            "ok": True,
            "hash": cms.hash_name,
            "signer": cert.subject.rfc4514_string(),
            "serial": f"{cms.serial:x}",
            "key_algorithm": cms.key_algorithm,
            "key_id": cms.subject_key_id.hex() or None,
            "module_size": len(signed.module),
        },
    )
    return 0


def register(subparsers: Any) -> None:
    """Add the ``module`` group."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "module", help="sign and verify kernel modules"
    )
    sub = parser.add_subparsers(dest="module_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)
    p = sub.add_parser("sign", help="append a kernel module signature (like sign-file)")
    p.add_argument(
        "--key", required=True, metavar="KEY", help="RSA or EC key URI (file:PATH or tpm:...)"
    )
    p.add_argument("--cert", required=True, metavar="CERT", help="X.509 certificate (PEM or DER)")
    p.add_argument("--hash", default="sha256", choices=sorted(HASH_OIDS))
    p.add_argument(
        "--key-id",
        action="store_true",
        help="name the signer by subjectKeyIdentifier (sign-file -k)",
    )
    p.add_argument("module", metavar="MODULE")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of in place")
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_sign)

    p = sub.add_parser("verify", help="verify a kernel module signature")
    p.add_argument("--cert", required=True, metavar="CERT")
    p.add_argument("module", metavar="MODULE")
    add_json_flag(p)
    p.set_defaults(func=_verify)
