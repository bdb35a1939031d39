"""``bastion fleet``: fleets (create, list) and who holds which role in them; EK trust
(``ek-policy``, ``ek-ca``, ``ek-deny``) lives in :mod:`bastion.cli._fleet_ektrust`, the
fleet configuration (``config get|set``) in :mod:`bastion.cli._fleet_config`."""

from __future__ import annotations

import argparse
from typing import Any

from bastion.cli._common import add_json_flag, emit


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL", help="fleet server (default: from login)")
    add_json_flag(parser)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fleet", help="fleets on the fleet server"
    )
    sub = parser.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create a fleet in an organisation you own")
    create.add_argument("name")
    create.add_argument("--org", help="organisation name or id (default: your only one)")
    create.add_argument(
        "--ek-policy",
        choices=("certified", "allow-list", "any"),
        default="certified",
        help="how enrolment proves TPM hardware: certified (default), allow-list, "
        "or any (DEVELOPMENT only: software TPMs enrol)",
    )
    _client_flags(create)
    create.set_defaults(func=_create)
    ls = sub.add_parser("list", help="fleets you hold a role in")
    _client_flags(ls)
    ls.set_defaults(func=_list)
    grant = sub.add_parser("grant", help="give an organisation member a role in a fleet")
    grant.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    grant.add_argument("email")
    grant.add_argument("role", choices=("viewer", "operator", "admin", "owner"))
    _client_flags(grant)
    grant.set_defaults(func=_grant)
    from bastion.cli import _fleet_ektrust

    _fleet_ektrust.register(sub)
    from bastion.cli import _fleet_config

    _fleet_config.register(sub)
    from bastion.cli import _fleet_attest

    _fleet_attest.register(sub)


def _api(args: argparse.Namespace) -> Any:
    from bastion.server.client import ApiClient

    return ApiClient.from_config(server=args.server)


def _create(args: argparse.Namespace) -> int:
    with _api(args) as api:
        org = api.resolve_org(args.org)
        fleet = api.call(
            "POST", f"/v1/orgs/{org['id']}/fleets", {"name": args.name, "ek_policy": args.ek_policy}
        )
    text = f"fleet {org['name']}/{fleet['name']} created (id {fleet['id']})"
    if fleet.get("warning"):
        text += f"\n  !! {fleet['warning']}"
    emit(args, text, fleet)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleets = api.call("GET", "/v1/fleets")
        orgs = {o["id"]: o["name"] for o in api.call("GET", "/v1/orgs")}
    lines = [
        f"{f['id']}  {orgs.get(f['org_id'], f['org_id'])}/{f['name']:<24} {f['role']:<8} {_ek(f)}"
        for f in fleets
    ]
    emit(args, "\n".join(lines) or "no fleets", fleets)
    return 0


def _ek(fleet: dict[str, Any]) -> str:
    from bastion.cli._fleet_ektrust import policy_text

    return policy_text(str(fleet.get("ek_policy", "certified")), fleet.get("warning"))


def _grant(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        member = api.call(
            "PUT", f"/v1/fleets/{fleet['id']}/members", {"email": args.email, "role": args.role}
        )
    emit(args, f"{member['email']} is {member['role']} of fleet {fleet['name']}", member)
    return 0
