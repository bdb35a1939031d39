"""``bastion device logs|events DEVICE_ID --fleet F [--since ID] [--follow] [--json]``.

Operator commands reading a device's stored log lines or events from
``/v1/fleets/{fleet}/devices/{id}/logs|events`` page by page, oldest first, with the
``since`` cursor (a record id). ``--follow`` keeps polling with the cursor every
``--interval`` seconds and prints what arrives; Ctrl-C ends it quietly with exit 0.
``--json`` prints one JSON array, or with ``--follow`` one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from bastion.cli import _fleet_http as api
from bastion.cli._common import add_json_flag

#: records per request (a page of 16 KiB records stays far below the client's bound)
PAGE = 200
#: how the follow loop waits between polls (tests substitute a double)
sleep: Callable[[float], None] = time.sleep


def register(subparsers: Any) -> None:
    """Add ``logs`` and ``events`` to the ``device`` group."""
    for kind, help_text in (
        ("logs", "show a device's stored log lines (operator)"),
        ("events", "show a device's stored events (operator)"),
    ):
        p = subparsers.add_parser(kind, help=help_text)
        p.add_argument("device_id", metavar="DEVICE_ID")
        p.add_argument(
            "--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME"
        )
        p.add_argument("--since", type=int, default=0, metavar="ID", help="after this record id")
        p.add_argument("--follow", "-f", action="store_true", help="keep polling for new records")
        p.add_argument(
            "--interval", type=float, default=2.0, metavar="SECONDS", help="poll interval"
        )
        api.add_server_flags(p)
        add_json_flag(p)
        p.set_defaults(func=_run, kind=kind)


def _text(kind: str, record: dict[str, Any]) -> str:
    if kind == "logs":
        return f"{record['at']}  {record['line']}"
    data = json.dumps(record["data"], sort_keys=True)
    return f"{record['at']}  {record['type']}  {data}"


def stream(
    fetch: Callable[[int], dict[str, Any]],
    since: int,
    out: Callable[[dict[str, Any]], None],
    *,
    follow: bool,
    interval: float,
) -> int:
    """Print pages from ``since`` on; with ``follow`` poll forever. Returns the cursor."""
    cursor = since
    while True:
        page = fetch(cursor)
        for record in page["records"]:
            out(record)
        cursor = int(page["next"])
        if len(page["records"]) >= PAGE:
            continue
        if not follow:
            return cursor
        sys.stdout.flush()
        sleep(interval)


def _run(args: argparse.Namespace) -> int:
    kind: str = args.kind
    collected: list[dict[str, Any]] = []

    def out(record: dict[str, Any]) -> None:
        if args.json and not args.follow:
            collected.append(record)
        elif args.json:
            print(json.dumps(record, sort_keys=True), flush=True)
        else:
            print(_text(kind, record), flush=True)

    try:
        with api.operator(args) as http:
            fleet = api.fleet_id(http, args.fleet)
            base = f"/v1/fleets/{fleet}/devices/{args.device_id}/{kind}"

            def fetch(cursor: int) -> dict[str, Any]:
                page: dict[str, Any] = http.call("GET", f"{base}?since={cursor}&limit={PAGE}")
                return page

            stream(fetch, args.since, out, follow=args.follow, interval=args.interval)
    except KeyboardInterrupt:
        return 0
    if args.json and not args.follow:
        json.dump(collected, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    return 0
