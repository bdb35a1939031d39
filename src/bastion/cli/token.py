"""``bastion token``: your personal API tokens (``bst_pat_...``) for scripts and CI.

* ``bastion token create NAME [--scope read|write|admin ...] [--expires-in-days N]``
  prints the secret once (a ``write`` or ``admin`` scope needs a fresh session:
  ``bastion user reauth``).
* ``bastion token list [--json]``; ``bastion token revoke ID``.

Token management needs a login session: a personal token cannot mint tokens.
"""

from __future__ import annotations

import argparse
from typing import Any

from bastion.cli._account import api, client_flags, fresh_call
from bastion.cli._common import emit

SCOPES = ("read", "write", "admin")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "token", help="personal API tokens for scripts"
    )
    sub = parser.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create a token (the secret is shown once)")
    create.add_argument("name")
    create.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        dest="scopes",
        help="read (default), write or admin; repeatable",
    )
    create.add_argument("--expires-in-days", type=int, default=30, metavar="N")
    client_flags(create)
    create.set_defaults(func=_create)
    ls = sub.add_parser("list", help="your tokens (never their secrets)")
    client_flags(ls)
    ls.set_defaults(func=_list)
    revoke = sub.add_parser("revoke", help="revoke a token")
    revoke.add_argument("token_id", metavar="ID")
    client_flags(revoke)
    revoke.set_defaults(func=_revoke)


def _create(args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "scopes": sorted(set(args.scopes or ["read"])),
        "expires_in_days": args.expires_in_days,
    }
    with api(args) as client:
        made = fresh_call(client, "POST", "/v1/me/tokens", body)
    emit(
        args,
        f"token {made['name']} ({' '.join(made['scopes'])}, expires {made['expires_at']}), "
        f"id {made['id']}:\n{made['token']}\nstore it now: it is not shown again",
        made,
    )
    return 0


def _state(row: dict[str, Any]) -> str:
    return "revoked" if row["revoked"] else f"expires {row['expires_at']}"


def _list(args: argparse.Namespace) -> int:
    with api(args) as client:
        rows = client.call("GET", "/v1/me/tokens")
    lines = [
        f"{r['id']}  {r['name']:<24} {' '.join(r['scopes']):<16} {r['hint']}  {_state(r)}"
        for r in rows
    ]
    emit(args, "\n".join(lines) or "no tokens", rows)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with api(args) as client:
        row = client.call("DELETE", f"/v1/me/tokens/{args.token_id}")
    emit(args, f"token {row['name']} ({row['hint']}) revoked", row)
    return 0
