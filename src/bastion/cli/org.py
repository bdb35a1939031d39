"""``bastion org``: organisations (create, list, invitations, leave, roles, require 2FA).

Membership needs consent: an owner runs ``bastion org invite EMAIL``; the invitee sees
it with ``bastion org invitations`` and runs ``bastion org accept ID`` or ``bastion org
decline ID``. ``bastion org invitations --sent`` lists an organisation's pending
invitations and ``bastion org uninvite ID`` withdraws one. ``bastion org leave`` leaves
an organisation (its last owner cannot); ``bastion org set-role EMAIL --role owner``
changes a member's standing.
"""

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
    invite = sub.add_parser("invite", help="invite an e-mail address (it joins on accept)")
    invite.add_argument("email")
    invite.add_argument("--org", help="organisation name or id (default: your only one)")
    invite.add_argument("--role", choices=("member", "owner"), default="member")
    invite.add_argument("--expires-in-days", type=int, default=7, metavar="N")
    _client_flags(invite)
    invite.set_defaults(func=_invite)
    listing = sub.add_parser("invitations", help="invitations to you (--sent: an org's)")
    listing.add_argument("--sent", action="store_true", help="an organisation's pending ones")
    listing.add_argument("--org", help="with --sent: organisation name or id")
    _client_flags(listing)
    listing.set_defaults(func=_invitations)
    for verb, text in (("accept", "accept an invitation"), ("decline", "decline an invitation")):
        answer = sub.add_parser(verb, help=text)
        answer.add_argument("invitation", metavar="ID")
        _client_flags(answer)
        answer.set_defaults(func=_answer, verb=verb)
    uninvite = sub.add_parser("uninvite", help="withdraw a pending invitation")
    uninvite.add_argument("invitation", metavar="ID")
    uninvite.add_argument("--org", help="organisation name or id (default: your only one)")
    _client_flags(uninvite)
    uninvite.set_defaults(func=_uninvite)
    leave = sub.add_parser("leave", help="leave an organisation (not as its last owner)")
    leave.add_argument("--org", help="organisation name or id (default: your only one)")
    _client_flags(leave)
    leave.set_defaults(func=_leave)
    member = sub.add_parser("set-role", help="change a member's standing")
    member.add_argument("email")
    member.add_argument("--org", help="organisation name or id (default: your only one)")
    member.add_argument("--role", choices=("member", "owner"), required=True)
    _client_flags(member)
    member.set_defaults(func=_set_role)
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


def _set_role(args: argparse.Namespace) -> int:
    with _api(args) as api:
        org = api.resolve_org(args.org)
        member = api.call(
            "PUT", f"/v1/orgs/{org['id']}/members", {"email": args.email, "role": args.role}
        )
    emit(args, f"{member['email']} is {member['role']} of {org['name']}", member)
    return 0


def _invite(args: argparse.Namespace) -> int:
    with _api(args) as api:
        org = api.resolve_org(args.org)
        body = {"email": args.email, "role": args.role, "expires_in_days": args.expires_in_days}
        invitation = api.call("POST", f"/v1/orgs/{org['id']}/invitations", body)
    emit(
        args,
        f"invited {invitation['email']} to {org['name']} as {invitation['role']} "
        f"(invitation {invitation['id']}, expires {invitation['expires_at']})",
        invitation,
    )
    return 0


def _invitation_line(inv: dict[str, Any]) -> str:
    return (
        f"{inv['id']}  {inv['org_name']:<24} {inv['email']:<32} {inv['role']:<7} "
        f"expires {inv['expires_at']}"
    )


def _invitations(args: argparse.Namespace) -> int:
    with _api(args) as api:
        if args.sent:
            org = api.resolve_org(args.org)
            found = api.call("GET", f"/v1/orgs/{org['id']}/invitations")
        else:
            found = api.call("GET", "/v1/me/invitations")
    emit(args, "\n".join(_invitation_line(i) for i in found) or "no invitations", found)
    return 0


def _answer(args: argparse.Namespace) -> int:
    with _api(args) as api:
        inv = api.call("POST", f"/v1/me/invitations/{args.invitation}/{args.verb}")
    done = "joined" if inv["state"] == "accepted" else "declined the invitation to"
    emit(args, f"{done} {inv['org_name']} (role {inv['role']})", inv)
    return 0


def _uninvite(args: argparse.Namespace) -> int:
    with _api(args) as api:
        org = api.resolve_org(args.org)
        api.call("DELETE", f"/v1/orgs/{org['id']}/invitations/{args.invitation}")
    emit(args, f"invitation {args.invitation} withdrawn", {"id": args.invitation})
    return 0


def _leave(args: argparse.Namespace) -> int:
    with _api(args) as api:
        org = api.resolve_org(args.org)
        api.call("POST", f"/v1/orgs/{org['id']}/leave")
    emit(args, f"left {org['name']}", {"org": org["id"], "left": True})
    return 0


def _require_2fa(args: argparse.Namespace) -> int:
    with _api(args) as api:
        org = api.resolve_org(args.org)
        out = api.call("PATCH", f"/v1/orgs/{org['id']}", {"require_2fa": args.state == "on"})
    emit(args, f"2FA {'required' if out['require_2fa'] else 'optional'} in {out['name']}", out)
    return 0
