"""``bastion fleet config get|set``: the configuration document every device of a fleet reads.

* ``bastion fleet config get FLEET [--json]`` prints it (JSON either way).
* ``bastion fleet config set FLEET [KEY=VALUE ...] [--unset KEY ...] [--file F]``
  changes keys of the current document (``VALUE`` is read as JSON when it is JSON,
  e.g. ``3``, ``true``, ``{"a": 1}``, else as a string), or starts from a whole
  document in ``--file`` (a strict JSON object, at most ``limits.FLEET_CONFIG_MAX_SIZE``
  bytes). Give the assignments before ``--unset``/``--file``. Operators and above
  may set it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.cli._common import add_json_flag, emit
from bastion.errors import FormatError
from bastion.formats import strict_json
from bastion.io.files import read_bounded


def register(sub: Any) -> None:
    """Add ``config`` to the ``fleet`` subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser("config", help="the fleet's configuration")
    config_sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    get = config_sub.add_parser("get", help="print the configuration")
    get.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    _client_flags(get)
    get.set_defaults(func=_get)
    put = config_sub.add_parser("set", help="change keys, or replace it from a file")
    put.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    put.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    put.add_argument("--unset", action="append", default=[], metavar="KEY", help="repeatable")
    put.add_argument("--file", type=Path, metavar="JSON", help="start from this whole document")
    _client_flags(put)
    put.set_defaults(func=_set)


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL", help="fleet server (default: from login)")
    add_json_flag(parser)


def parse_value(text: str) -> Any:
    """``text`` as strict JSON when it is JSON, else the string itself."""
    try:
        return strict_json.loads(text, what="config value", max_size=limits.FLEET_CONFIG_MAX_SIZE)
    except FormatError:
        return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (KEY, value); FormatError without ``=`` or with an empty key."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise FormatError(f"config assignment {text[:40]!r}: expected KEY=VALUE")
    return key.strip(), parse_value(value)


def _api(args: argparse.Namespace) -> Any:
    from bastion.server.client import ApiClient

    return ApiClient.from_config(server=args.server)


def _text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True)


def _get(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        answer = api.call("GET", f"/v1/fleets/{fleet['id']}/config")
    emit(args, _text(answer["config"]), answer["config"])
    return 0


def _set(args: argparse.Namespace) -> int:
    pairs = [parse_assignment(a) for a in args.assignments]
    if not pairs and not args.unset and args.file is None:
        raise FormatError("nothing to set: give KEY=VALUE, --unset KEY or --file JSON")
    base: dict[str, Any] | None = None
    if args.file is not None:
        data = read_bounded(args.file, limits.FLEET_CONFIG_MAX_SIZE, "fleet configuration")
        base = strict_json.loads_object(data, what=f"fleet configuration {args.file}")
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        if base is None:
            base = dict(api.call("GET", f"/v1/fleets/{fleet['id']}/config")["config"])
        for key in args.unset:
            base.pop(key, None)
        base.update(pairs)
        answer = api.call("PUT", f"/v1/fleets/{fleet['id']}/config", {"config": base})
    emit(
        args,
        f"configuration of fleet {fleet['name']}:\n{_text(answer['config'])}",
        answer["config"],
    )
    return 0
