"""``bastion env``: a fleet's environment variables (set, list, unset).

``bastion env set --fleet FLEET NAME=VALUE [NAME=VALUE ...]`` sets fleet-wide variables
that every device of the fleet reads (devices may carry overrides).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from bastion.cli._common import add_json_flag, emit
from bastion.errors import FormatError

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", required=True, help="fleet id, name, or ORG/NAME")
    parser.add_argument("--server", metavar="URL", help="fleet server (default: from login)")
    add_json_flag(parser)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "env", help="fleet environment variables"
    )
    sub = parser.add_subparsers(dest="env_command", metavar="SUBCOMMAND", required=True)
    put = sub.add_parser("set", help="set NAME=VALUE for the whole fleet")
    put.add_argument("assignments", nargs="+", metavar="NAME=VALUE")
    _flags(put)
    put.set_defaults(func=_set)
    ls = sub.add_parser("list", help="the fleet's variables")
    _flags(ls)
    ls.set_defaults(func=_list)
    unset = sub.add_parser("unset", help="remove a variable")
    unset.add_argument("name")
    _flags(unset)
    unset.set_defaults(func=_unset)


def parse_assignment(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (NAME, VALUE); FormatError naming what was expected."""
    name, sep, value = text.partition("=")
    if not sep or not NAME_RE.match(name):
        raise FormatError(
            f"environment assignment {text[:40]!r}: expected NAME=VALUE with NAME "
            "matching [A-Za-z_][A-Za-z0-9_]*"
        )
    return name, value


def _api(args: argparse.Namespace) -> Any:
    from bastion.server.client import ApiClient

    return ApiClient.from_config(server=args.server)


def _set(args: argparse.Namespace) -> int:
    pairs = [parse_assignment(a) for a in args.assignments]
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        done = [
            api.call("PUT", f"/v1/fleets/{fleet['id']}/env/{name}", {"value": value})
            for name, value in pairs
        ]
    emit(args, "\n".join(f"{d['name']} set in fleet {fleet['name']}" for d in done), done)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        env = api.call("GET", f"/v1/fleets/{fleet['id']}/env")
    emit(args, "\n".join(f"{e['name']}={e['value']}" for e in env), env)
    return 0


def _unset(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        api.call("DELETE", f"/v1/fleets/{fleet['id']}/env/{args.name}")
    emit(args, f"{args.name} removed from fleet {fleet['name']}", {"name": args.name})
    return 0
