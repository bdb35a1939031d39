"""Helpers shared by command groups: ``--json`` output, the ``--tpm`` flag, printing."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from bastion.errors import BastionError, ConfigError

Handler = Callable[[argparse.Namespace], int]

#: the one spelling of a TPM backend everywhere in bastion
TPM_HELP = (
    "TPM backend: software:PATH (pure-Python TPM state file), "
    "swtpm:host=H,port=P, or device:/dev/tpmrm0 (default: software TPM in the default state folder)"
)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``: print one machine-readable JSON document instead of text."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_tpm_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--tpm URI`` choosing the TPM backend."""
    parser.add_argument("--tpm", metavar="URI", default=None, help=TPM_HELP)


def emit(args: argparse.Namespace, text: str, data: Any) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else ``text``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    elif text:
        print(text)


def fail_line(message: str) -> None:
    """Print one line to stderr (for warnings; errors go through BastionError)."""
    print(f"bastion: {message}", file=sys.stderr)


def add_passphrase_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--passphrase-env VAR``: the passphrase of encrypted private keys is in $VAR."""
    parser.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="passphrase of encrypted private keys is in $VAR (else asked on a terminal)",
    )


def passphrase_source(args: argparse.Namespace, what: str) -> Callable[[], bytes] | None:
    """Where the passphrase of an encrypted key comes from, asked only if a key needs it.

    ``--passphrase-env VAR`` (never argv itself), else a prompt when stdin is a terminal
    (asked once per command, however many keys it opens), else None: an encrypted key
    is then refused with an AuthError naming the file.
    """
    env = getattr(args, "passphrase_env", None)
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"--passphrase-env {env}: the variable is not set or empty")
        secret = value.encode()
        return lambda: secret
    if not sys.stdin.isatty():
        return None
    asked: list[bytes] = []

    def ask() -> bytes:
        if not asked:
            asked.append(getpass.getpass(f"passphrase for {what}: ").encode())
        return asked[0]

    return ask


def text_value(value: Any) -> str:
    """A value as text output shows it, never as a Python repr: None is ``-``, a bool
    ``yes``/``no``, a list its items joined by commas, a mapping ``key=value`` pairs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(text_value(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={text_value(v)}" for k, v in value.items()) or "-"
    return str(value)


def about_file(exc: BastionError, path: str) -> BastionError:
    """``exc`` naming the file it is about (same class): for errors raised over bytes."""
    if path in str(exc):
        return exc
    try:
        return type(exc)(f"{path}: {exc}")
    except TypeError:  # a class with other constructor arguments keeps its message
        return exc
