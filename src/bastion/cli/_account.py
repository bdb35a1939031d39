"""Helpers of the account commands (``user``, ``totp``, ``token``, ``audit``).

* :func:`client_flags` adds ``--server`` and ``--json``; :func:`api` builds the
  operator's client from them and the stored login.
* :func:`fresh_call` turns the server's ``reauth_required`` answer into a message
  naming ``bastion user reauth``.
* :func:`read_code` takes a one-time code from a flag, the terminal or one line of
  standard input (so scripts can pipe it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bastion.cli._common import add_json_flag
from bastion.errors import ConfigError, ReauthRequiredError

REAUTH_HINT = "run 'bastion user reauth' (password and second factor), then try again"


def client_flags(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--json``."""
    parser.add_argument("--server", metavar="URL", help="fleet server (default: from login)")
    add_json_flag(parser)


def second_factor_flags(parser: argparse.ArgumentParser) -> None:
    """``--totp CODE`` or ``--recovery-code CODE``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--totp", metavar="CODE", help="6-digit code, when 2FA is enrolled")
    group.add_argument("--recovery-code", metavar="CODE", help="a recovery code instead")


def api(args: argparse.Namespace) -> Any:
    """The operator's API client (``--server``, environment, or the stored login)."""
    from bastion.server.client import ApiClient

    return ApiClient.from_config(server=getattr(args, "server", None))


def fresh_call(client: Any, method: str, path: str, body: Any = None) -> Any:
    """``client.call``, with a hint when the server wants a fresh login first."""
    try:
        return client.call(method, path, body)
    except ReauthRequiredError as exc:
        raise ReauthRequiredError(f"{exc}; {REAUTH_HINT}") from exc


def reauth_body(password: str, args: argparse.Namespace) -> dict[str, Any]:
    """The body of ``POST /v1/auth/reauth`` from a password and the 2FA flags."""
    body: dict[str, Any] = {"password": password}
    if getattr(args, "totp", None):
        body["totp"] = args.totp
    if getattr(args, "recovery_code", None):
        body["recovery_code"] = args.recovery_code
    return body


def read_code(given: str | None, prompt: str) -> str:
    """A one-time code: ``given``, else asked on the terminal, else one stdin line."""
    if given:
        return given.strip()
    if sys.stdin.isatty():
        return input(prompt).strip()
    line = sys.stdin.readline()
    if not line.strip():
        raise ConfigError("no code given: pass --code CODE or write it to standard input")
    return line.strip()


def info(args: argparse.Namespace, text: str) -> None:
    """A line for the person at the terminal: stdout, or stderr under ``--json``."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)
