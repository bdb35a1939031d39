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


def _group_modules(only: str | None = None) -> list[str]:
    """Names of the command-group modules, or just ``only`` when it is one of them."""
    import bastion.cli as cli_pkg

    names = sorted(
        info.name
        for info in pkgutil.iter_modules(cli_pkg.__path__)
        if not info.name.startswith("_") and info.name != "main"
    )
    if only is not None and only in names:
        return [only]
    return names


def _first_command(argv: Sequence[str]) -> str | None:
    """The module name of the command group ``argv`` asks for, if it names one directly."""
    for arg in argv:
        if arg.startswith("-"):
            return None  # a global option first: parse with every group
        return arg.replace("-", "_")
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every discovered command group, or only the group module ``only``.

    Loading one group instead of all of them keeps start-up fast: some groups pull in
    the server stack or the TPM bindings, which a ``bastion verity`` call never needs.
    """
    parser = argparse.ArgumentParser(
        prog="bastion",
        description="Secure Linux edge devices and their fleets end to end.",
    )
    parser.add_argument("--version", action="version", version=f"bastion {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _group_modules(only):
        module = importlib.import_module(f"bastion.cli.{name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_first_command(argv))
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
    except BrokenPipeError:
        return 141
    except OSError as exc:
        # a file-system refusal no adapter anticipated: one line, never a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"bastion: {exc.strerror or exc}{where}", file=sys.stderr)
        return 10
    except KeyboardInterrupt:
        print("bastion: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def entry() -> None:
    """Console-script wrapper: exits with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
