"""``bastion device``: one command group shared by the device plane and fleet operators.

Subcommands come from the private modules ``bastion.cli._device_*`` (for example
``_device_boot`` for create/boot/inspect/eventlog and ``_device_fleet`` for
provision/list/show/revoke); each exposes ``register(subparsers)``. Splitting them keeps
the boot chain and the fleet client in separate files that evolve independently.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``device`` group and every ``_device_*`` subcommand module."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "device", help="create, boot, inspect and provision devices"
    )
    sub = parser.add_subparsers(dest="device_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)
    import bastion.cli as cli_pkg

    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_device_"):
            module = importlib.import_module(f"bastion.cli.{info.name}")
            module.register(sub)
