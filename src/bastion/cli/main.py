"""The ``bastion`` command: discovers command groups, runs one, maps errors to exit codes.

Each module in :mod:`bastion.cli` that defines ``register(subparsers)`` contributes a
command group. A handler is stored as ``func`` on its parser and called with the parsed
namespace; it returns an exit code. This is the only place bastion turns a
:class:`~bastion.errors.BastionError` into a message and an exit code, and the only
place that exits the process.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from bastion import __version__
from bastion.errors import BastionError


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every discovered command group."""
    parser = argparse.ArgumentParser(
        prog="bastion",
        description="Secure Linux edge devices and their fleets end to end.",
    )
    parser.add_argument("--version", action="version", version=f"bastion {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import bastion.cli as cli_pkg

    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"bastion.cli.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = func(args)
    except BastionError as exc:
        print(f"bastion: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bastion: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    return int(code or 0)


def entry() -> None:
    """Console-script wrapper: exits with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
