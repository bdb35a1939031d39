"""``bastion org``: organisations (create, list, add a member, require 2FA)."""

from __future__ import annotations

import argparse
from typing import Any

from bastion.cli._common import add_json_flag, emit


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL", help="fleet server (default: from login)")
    add_json_flag(parser)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "org", help="organisations on the fleet server"
    )
    sub = parser.add_subparsers(dest="org_command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create an organisation (you become its owner)")
    create.add_argument("name")
    _client_flags(create)
    create.set_defaults(func=_create)
    ls = sub.add_parser("list", help="organisations you belong to")
    _client_flags(ls)
    ls.set_defaults(func=_list)
    member = sub.add_parser("add-member", help="add a user to an organisation")
    member.add_argument("email")
    member.add_argument("--org", help="organisation name or id (default: your only one)")
    member.add_argument("--role", choices=("member", "owner"), default="member")
    _client_flags(member)
    member.set_defaults(func=_add_member)
    twofa = sub.add_parser("require-2fa", help="turn 2FA enforcement on or off")
    twofa.add_argument("state", choices=("on", "off"))
    twofa.add_argument("--org", help="organisation name or id (default: your only one)")
    _client_flags(twofa)
    twofa.set_defaults(func=_require_2fa)


def _api(args: argparse.Namespace) -> Any:
    from bastion.server.client import ApiClient

    return ApiClient.from_config(server=args.server)


def _create(args: argparse.Namespace) -> int:
    with _api(args) as api:
        org = api.call("POST", "/v1/orgs", {"name": args.name})
    emit(args, f"organisation {org['name']} created (id {org['id']})", org)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _api(args) as api:
        orgs = api.call("GET", "/v1/orgs")
    lines = [
        f"{o['id']}  {o['name']:<24} {o['role']:<7} 2fa={'on' if o['require_2fa'] else 'off'}"
        for o in orgs
    ]
    emit(args, "\n".join(lines) or "no organisations", orgs)
    return 0


def _add_member(args: argparse.Namespace) -> int:
    with _api(args) as api:
        org = api.resolve_org(args.org)
        member = api.call(
            "PUT", f"/v1/orgs/{org['id']}/members", {"email": args.email, "role": args.role}
        )
    emit(args, f"{member['email']} is {member['role']} of {org['name']}", member)
    return 0


def _require_2fa(args: argparse.Namespace) -> int:
    with _api(args) as api:
        org = api.resolve_org(args.org)
        out = api.call("PATCH", f"/v1/orgs/{org['id']}", {"require_2fa": args.state == "on"})
    emit(args, f"2FA {'required' if out['require_2fa'] else 'optional'} in {out['name']}", out)
    return 0
