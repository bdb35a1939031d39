"""``bastion audit``: an organisation's audit log through the API (organisation owners).

* ``bastion audit show [--org ORG] [--after SEQ] [--limit N] [--json]``: one page of
  entries after sequence number ``SEQ``.
* ``bastion audit export [--org ORG] [--after SEQ] [--out FILE]``: every entry after
  ``SEQ``, fetched page by page, as JSON lines (one entry per line, keys sorted).

The server-wide chain is verified on the server with ``bastion server audit verify``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.cli._account import api, client_flags
from bastion.cli._common import emit

#: entries asked for in one request by ``export``
PAGE = limits.API_LIST_MAX


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "audit", help="an organisation's audit log (owners)"
    )
    sub = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    show = sub.add_parser("show", help="one page of audit entries")
    _flags(show)
    show.add_argument("--limit", type=int, default=50, metavar="N", help="entries (default 50)")
    client_flags(show)
    show.set_defaults(func=_show)
    export = sub.add_parser("export", help="every entry as JSON lines")
    _flags(export)
    export.add_argument("--out", type=Path, metavar="FILE", help="write here (default: stdout)")
    export.add_argument("--server", metavar="URL", help="fleet server (default: from login)")
    export.set_defaults(func=_export)


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", help="organisation name or id (default: your only one)")
    parser.add_argument(
        "--after", type=int, default=0, metavar="SEQ", help="entries after this sequence number"
    )


def pages(client: Any, org_id: str, after: int, page: int) -> Iterator[dict[str, Any]]:
    """Every entry after ``after``, ``page`` at a time, until a short page."""
    while True:
        rows: list[dict[str, Any]] = client.call(
            "GET", f"/v1/orgs/{org_id}/audit?after={after}&limit={page}"
        )
        yield from rows
        if len(rows) < page:
            return
        after = int(rows[-1]["seq"])


def _show(args: argparse.Namespace) -> int:
    limit = max(1, min(args.limit, limits.API_LIST_MAX))
    with api(args) as client:
        org = client.resolve_org(args.org)
        rows: list[dict[str, Any]] = client.call(
            "GET", f"/v1/orgs/{org['id']}/audit?after={args.after}&limit={limit}"
        )
    lines = [
        f"{r['seq']:>6}  {r['at']}  {r['event']:<28} {r['actor']}  "
        + json.dumps(r["details"], sort_keys=True)
        for r in rows
    ]
    emit(args, "\n".join(lines) or "no entries", rows)
    return 0


def _export(args: argparse.Namespace) -> int:
    from bastion.io.files import atomic_write

    with api(args) as client:
        org = client.resolve_org(args.org)
        lines = [
            json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n"
            for row in pages(client, org["id"], args.after, PAGE)
        ]
    data = "".join(lines)
    if args.out is None:
        sys.stdout.write(data)
        return 0
    atomic_write(args.out, data.encode(), mode=0o600)
    print(f"{len(lines)} audit entries of {org['name']} -> {args.out}", file=sys.stderr)
    return 0
