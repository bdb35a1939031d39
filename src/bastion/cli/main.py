"""The ``bastion`` command: discovers command groups, runs one, maps errors to exit codes.

Each module in :mod:`bastion.cli` that defines ``register(subparsers)`` contributes a
command group. A handler is stored as ``func`` on its parser and called with the parsed
namespace; it returns an exit code. This is the only place bastion turns a
:class:`~bastion.errors.BastionError` into a message and an exit code, and the only
place that exits the process.

Exit codes are the table in docs/cli.md. A usage error (argparse's) exits with
:data:`EXIT_USAGE` (ConfigError's code: 2 means a failed verification) and shows the
usage of the sub-command that was typed. With ``--json`` a failure also prints one
JSON error object on stdout: ``{"error": {"code": N, "kind": "...", "message": "..."}}``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from bastion import __version__
from bastion.errors import BastionError, ConfigError

EXIT_USAGE = ConfigError.exit_code  # a command line argparse refused, or no sub-command
EXIT_OS = 10  # an OSError no adapter wrapped
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BROKEN_PIPE = 141  # stdout closed early (| head)
_PARSER_ATTR = "bastion_parser"  # the deepest (sub-)parser that parsed the command line


class UsageError(Exception):
    """argparse refused the command line; ``parser`` is the sub-command's parser."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """argparse that raises on a usage error (main prints it) and remembers which
    sub-command parser ran, so an error shows that sub-command's usage."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if not hasattr(parsed, _PARSER_ATTR):  # the innermost parser finishes first
            setattr(parsed, _PARSER_ATTR, self)
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


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
    parser = _Parser(
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


#: attributes of an error that say where it is (boot stage, verity area/block/level)
_WHERE = ("stage", "area", "block", "level")


def _fail(
    as_json: bool,
    code: int,
    kind: str,
    message: str,
    line: str | None = None,
    *,
    exc: BaseException | None = None,
) -> int:
    """Report a failure: one line on stderr, and the JSON error object on stdout."""
    print(line or f"bastion: {kind}: {message}", file=sys.stderr)
    if as_json:
        error: dict[str, Any] = {"code": code, "kind": kind, "message": message}
        error.update({k: getattr(exc, k) for k in _WHERE if hasattr(exc, k)})
        doc = {"error": error}
        json.dump(doc, sys.stdout, sort_keys=True, default=str)
        sys.stdout.write("\n")
    return code


def _missing_subcommand(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The sub-commands to choose from when ``parser`` has some and none was given."""
    for action in parser._actions:  # argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction) and (
            getattr(args, action.dest, None) is None
        ):
            return ", ".join(action.choices)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    parser = build_parser(_first_command(argv))
    try:
        args, extras = parser.parse_known_args(argv)
        used: argparse.ArgumentParser = getattr(args, _PARSER_ATTR, parser)
        if extras:
            used.error(f"unrecognized arguments: {' '.join(extras)}")
    except UsageError as exc:
        usage = exc.parser.format_usage().rstrip("\n")
        line = f"{usage}\n{exc.parser.prog}: error: {exc}"
        return _fail(as_json, EXIT_USAGE, "UsageError", f"{exc.parser.prog}: {exc}", line)
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    as_json = bool(getattr(args, "json", False))
    func: Any = getattr(args, "func", None)
    # a group typed without its sub-command: unless the group runs something itself
    # (`bastion server` serves), its handler only prints help: make that a usage error
    choices = _missing_subcommand(used, args)
    if choices is not None and getattr(func, "__name__", "_usage") in ("_usage", "<lambda>"):
        used.print_help(sys.stderr)
        message = f"choose a sub-command: {choices}"
        line = f"{used.prog}: error: {message}"
        return _fail(as_json, EXIT_USAGE, "UsageError", f"{used.prog}: {message}", line)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code = func(args)
    except BastionError as exc:
        return _fail(as_json, exc.exit_code, type(exc).__name__, str(exc), exc=exc)
    except BrokenPipeError:
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        # a file-system refusal no adapter anticipated: one line, never a traceback
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
        return _fail(as_json, EXIT_OS, "OSError", message, f"bastion: {message}")
    except KeyboardInterrupt:
        return _fail(
            as_json, EXIT_INTERRUPTED, "Interrupted", "interrupted", "bastion: interrupted"
        )
    return int(code or 0)


def entry() -> None:
    """Console-script wrapper: exits with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
