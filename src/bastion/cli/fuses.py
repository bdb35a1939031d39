"""``bastion fuses``: show, blow and burn the fuse bank (file or TPM NV bits).

``--fuses PATH`` names a fuse file (the simulated platform); ``--tpm URI`` uses TPM NV
bits indexes from ``--nv-base``; with neither, the fuse file in the bastion state
folder. ``show`` prints the key hash and the security-version counter; ``blow N`` blows
bits until the counter is N (never lowers it); ``burn HASH`` burns the platform root
key hash once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bastion.cli._common import add_json_flag, add_tpm_flag, emit
from bastion.errors import ConfigError
from bastion.tpm.base import Tpm
from bastion.tpm.fuses import DEFAULT_BASE_INDEX, FileFuseBank, FuseBank, TpmFuseBank
from bastion.tpm.uri import bastion_state_dir, open_tpm

FUSE_FILE = "fuses.bin"


def _bank(args: argparse.Namespace) -> tuple[FuseBank, Tpm | None]:
    if args.fuses is not None and args.tpm is not None:
        raise ConfigError("give --fuses PATH or --tpm URI, not both")
    if args.tpm is not None:
        tpm = open_tpm(args.tpm)
        return TpmFuseBank(tpm, args.nv_base), tpm
    path = Path(args.fuses) if args.fuses is not None else bastion_state_dir() / FUSE_FILE
    return FileFuseBank(path), None


def _describe(shown: dict[str, object]) -> str:
    where = shown.get("path") or f"TPM NV {shown.get('base_index')}"
    key = shown["key_hash"] or "(not burned)"
    return (
        f"fuses {where}\n  key hash: {key}\n  counter:  {shown['counter']} (bits {shown['bits']})"
    )


def _run(args: argparse.Namespace, action: str) -> int:
    bank, tpm = _bank(args)
    try:
        if action == "blow":
            bank.blow_to(args.count)
        elif action == "burn":
            bank.burn_key_hash(_hash(args.hash))
        shown = bank.show()
    finally:
        if tpm is not None:
            tpm.close()
    emit(args, _describe(shown), shown)
    return 0


def _hash(text: str) -> bytes:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(f"key hash {text!r}: expected 64 hex digits (SHA-256)")
    return bytes.fromhex(value)


def _nv_index(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"NV index {text!r}: expected e.g. 0x013ba500") from exc


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fuses", metavar="PATH", help="fuse file (default: in the state folder)")
    add_tpm_flag(p)
    p.add_argument(
        "--nv-base",
        type=_nv_index,
        default=DEFAULT_BASE_INDEX,
        help=f"first of the five NV indexes with --tpm (default 0x{DEFAULT_BASE_INDEX:08x})",
    )
    add_json_flag(p)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``fuses`` command group."""
    group = subparsers.add_parser("fuses", help="one-time-programmable fuses: key hash, counter")
    sub = group.add_subparsers(dest="fuses_command", metavar="SUBCOMMAND")
    group.set_defaults(func=lambda _args: _usage(group))

    p = sub.add_parser("show", help="print the key hash and the security-version counter")
    _common(p)
    p.set_defaults(func=lambda a: _run(a, "show"))

    p = sub.add_parser("blow", help="blow fuse bits until the counter is N (never lowers)")
    p.add_argument("count", type=int, help="security version 0..64")
    _common(p)
    p.set_defaults(func=lambda a: _run(a, "blow"))

    p = sub.add_parser("burn", help="burn the platform root key hash (once)")
    p.add_argument("hash", help="SHA-256 of the platform root public key (hex)")
    _common(p)
    p.set_defaults(func=lambda a: _run(a, "burn"))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
