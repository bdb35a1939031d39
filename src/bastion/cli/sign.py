"""``bastion sign`` and ``bastion verify``: DSSE envelopes from the command line.

``sign --key URI --type T IN -o OUT.json`` wraps IN in a signed envelope;
with ``--append`` it adds a signature to the existing OUT.json (whose payload and
type must match IN and T). ``verify --key PEM... [--threshold N] --type T ENVELOPE``
checks that N distinct trusted keys signed it and can write the payload out.
Encrypted keys take their passphrase from ``file:PATH?passphrase-env=VAR`` or, on a
terminal, from a prompt.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.cli._common import add_json_flag, add_passphrase_flag, emit, passphrase_source
from bastion.errors import ConflictError, SignatureError
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import ENVELOPE_MAX_SIZE
from bastion.trust.envelope import Envelope, sign_envelope, verify_envelope_result
from bastion.trust.keys import load_verifier, open_signer


def passphrase_prompt(uri: str) -> Callable[[], bytes] | None:
    """A getpass prompt when stdin is a terminal, else None (then the env var is needed)."""
    return passphrase_source(argparse.Namespace(), uri)


def _sign(args: argparse.Namespace) -> int:
    signer = open_signer(args.key, passphrase=passphrase_source(args, args.key))
    payload = read_bounded(args.input, ENVELOPE_MAX_SIZE, "payload")
    out = Path(args.output)
    if args.append:
        env = Envelope.parse(read_bounded(out, ENVELOPE_MAX_SIZE, "envelope"))
        if env.payload_type != args.type or env.payload != payload:
            raise ConflictError(
                f"{out}: its payload type {env.payload_type!r} or payload differs from "
                f"{args.input} / {args.type!r}; refusing to append"
            )
        env = env.add_signature(signer)
    else:
        env = sign_envelope(args.type, payload, [signer])
    atomic_write(out, env.to_bytes())
    emit(
        args,
        f"signed {args.input} as {args.type} with key {signer.key_id[:16]}... "
        f"({len(env.signatures)} signature(s)) -> {out}",
        {"output": str(out), "key_id": signer.key_id, "signatures": len(env.signatures)},
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    verifiers = [load_verifier(k) for k in args.key]
    env = Envelope.parse(read_bounded(args.envelope, ENVELOPE_MAX_SIZE, "envelope"))
    result = verify_envelope_result(
        env, verifiers, payload_type=args.type, threshold=args.threshold
    )
    data = {
        "ok": result.ok,
        "payload_type": env.payload_type,
        "threshold": args.threshold,
        "valid_keyids": list(result.valid_keyids),
        "failures": list(result.failures),
    }
    if not result.ok:  # with --json, main prints the error object
        raise SignatureError(f"{args.envelope}: " + "; ".join(result.failures))
    if args.output:
        atomic_write(args.output, result.payload)
    emit(
        args,
        f"OK: {args.envelope} ({args.type}) signed by {len(result.valid_keyids)} trusted "
        f"key(s), threshold {args.threshold}",
        data,
    )
    return 0


def register(subparsers: Any) -> None:
    """Add the top-level ``sign`` and ``verify`` commands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sign", help="sign a payload into a DSSE envelope"
    )
    p.add_argument(
        "--key",
        required=True,
        metavar="URI",
        help="file:PATH[?passphrase-env=VAR] or tpm:BACKEND#KEYFILE",
    )
    p.add_argument("--type", required=True, metavar="PAYLOAD_TYPE")
    p.add_argument("input", metavar="IN")
    p.add_argument("-o", "--output", required=True, metavar="OUT.json")
    p.add_argument("--append", action="store_true", help="add a signature to the existing OUT.json")
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_sign)

    p = subparsers.add_parser("verify", help="verify a DSSE envelope against trusted keys")
    p.add_argument(
        "--key",
        required=True,
        action="append",
        metavar="PEM",
        help="trusted public key or certificate (repeat)",
    )
    p.add_argument("--threshold", type=int, default=1, metavar="N")
    p.add_argument("--type", required=True, metavar="PAYLOAD_TYPE")
    p.add_argument("envelope", metavar="ENVELOPE")
    p.add_argument("-o", "--output", metavar="PAYLOAD", help="write the verified payload here")
    add_json_flag(p)
    p.set_defaults(func=_verify)
