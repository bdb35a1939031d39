"""Helpers shared by command groups: ``--json`` output, the ``--tpm`` flag, printing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

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
