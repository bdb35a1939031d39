"""``bastion fleet ek-policy|ek-ca|ek-deny``: how a fleet's enrolment proves TPM hardware.

* ``ek-policy FLEET [certified|allow-list|any]`` shows or sets the EK policy (``any``
  is development only and says so loudly);
* ``ek-ca add FLEET PEM [--name N] | list FLEET | remove FLEET CA`` manages the trust
  store of TPM manufacturer CA certificates that EK certificates must chain to;
* ``ek-deny list FLEET | add FLEET EK_SHA256 [--reason R] | remove FLEET EK_SHA256``
  manages the deny-list of EKs (revoking a device adds its EK; ``remove`` lifts it).

Thin: each command is one call to ``/v1/fleets/{fleet}/ek-*`` (docs/provisioning.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.cli._common import add_json_flag, emit, fail_line
from bastion.io.files import read_bounded

POLICIES = ("certified", "allow-list", "any")


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL", help="fleet server (default: from login)")
    add_json_flag(parser)


def _api(args: argparse.Namespace) -> Any:
    from bastion.server.client import ApiClient

    return ApiClient.from_config(server=args.server)


def register(sub: Any) -> None:
    """Add ek-policy, ek-ca and ek-deny to the ``fleet`` group."""
    pol = sub.add_parser("ek-policy", help="show or set how enrolment proves TPM hardware")
    pol.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    pol.add_argument("policy", nargs="?", choices=POLICIES, help="set it (owner)")
    _flags(pol)
    pol.set_defaults(func=_policy)

    ca = sub.add_parser("ek-ca", help="the fleet's trusted TPM manufacturer CAs")
    ca_sub = ca.add_subparsers(dest="ek_ca_command", metavar="SUBCOMMAND", required=True)
    add = ca_sub.add_parser("add", help="trust a CA certificate (PEM file) to certify EKs")
    add.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    add.add_argument("certificate", type=Path, metavar="PEM")
    add.add_argument("--name", help="a label (default: the certificate's subject)")
    _flags(add)
    add.set_defaults(func=_ca_add)
    ls = ca_sub.add_parser("list", help="the CAs this fleet trusts")
    ls.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    _flags(ls)
    ls.set_defaults(func=_ca_list)
    rm = ca_sub.add_parser("remove", help="stop trusting a CA (id or SHA-256)")
    rm.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    rm.add_argument("ca", metavar="CA")
    _flags(rm)
    rm.set_defaults(func=_ca_remove)

    deny = sub.add_parser("ek-deny", help="the fleet's deny-list of EKs")
    deny_sub = deny.add_subparsers(dest="ek_deny_command", metavar="SUBCOMMAND", required=True)
    dl = deny_sub.add_parser("list", help="EKs that may not enrol")
    dl.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    _flags(dl)
    dl.set_defaults(func=_deny_list)
    da = deny_sub.add_parser("add", help="deny an EK (SHA-256 of its TPM2B_PUBLIC)")
    da.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    da.add_argument("ek_sha256", metavar="EK_SHA256")
    da.add_argument("--reason", default="", help="why (kept in the list and the audit log)")
    _flags(da)
    da.set_defaults(func=_deny_add)
    dr = deny_sub.add_parser("remove", help="lift a denial: the EK may enrol again")
    dr.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    dr.add_argument("ek_sha256", metavar="EK_SHA256")
    _flags(dr)
    dr.set_defaults(func=_deny_remove)


def policy_text(policy: str, warning: str | None) -> str:
    """``ek certified`` or the loud development line."""
    return f"ek {policy}" + (f"  !! {warning}" if warning else "")


def _policy(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        path = f"/v1/fleets/{fleet['id']}/ek-policy"
        if args.policy:
            out = api.call("PUT", path, {"ek_policy": args.policy})
        else:
            out = api.call("GET", path)
    if out.get("warning") and not args.json:
        fail_line(out["warning"])
    emit(args, f"fleet {fleet['name']}: {policy_text(out['ek_policy'], out.get('warning'))}", out)
    return 0


def _ca_add(args: argparse.Namespace) -> int:
    pem = read_bounded(args.certificate, limits.EK_CA_MAX_PEM, "EK CA certificate")
    body: dict[str, Any] = {"certificate": pem.decode(errors="replace")}
    if args.name:
        body["name"] = args.name
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        ca = api.call("POST", f"/v1/fleets/{fleet['id']}/ek-cas", body)
    emit(args, f"fleet {fleet['name']} trusts EK CA {ca['subject']} (id {ca['id']})", ca)
    return 0


def _ca_list(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        cas = api.call("GET", f"/v1/fleets/{fleet['id']}/ek-cas")
    lines = [
        f"{c['id']}  {c['sha256'][:16]}  until {c['not_after'][:10]}  {c['subject']}" for c in cas
    ]
    emit(args, "\n".join(lines) or "no EK CA: a certified fleet enrols no device yet", cas)
    return 0


def _ca_remove(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        api.call("DELETE", f"/v1/fleets/{fleet['id']}/ek-cas/{args.ca}")
    emit(args, f"fleet {fleet['name']} no longer trusts EK CA {args.ca}", {"removed": args.ca})
    return 0


def _deny_list(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        rows = api.call("GET", f"/v1/fleets/{fleet['id']}/ek-denylist")
    lines = [f"{r['ek_sha256']}  {r['created_at'][:19]}  {r['reason']}" for r in rows]
    emit(args, "\n".join(lines) or "no denied EK", rows)
    return 0


def _deny_add(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        row = api.call(
            "POST",
            f"/v1/fleets/{fleet['id']}/ek-denylist",
            {"ek_sha256": args.ek_sha256, "reason": args.reason},
        )
    emit(args, f"EK {row['ek_sha256'][:16]}... may not enrol into {fleet['name']}", row)
    return 0


def _deny_remove(args: argparse.Namespace) -> int:
    with _api(args) as api:
        fleet = api.resolve_fleet(args.fleet)
        api.call("DELETE", f"/v1/fleets/{fleet['id']}/ek-denylist/{args.ek_sha256.lower()}")
    emit(
        args,
        f"EK {args.ek_sha256[:16]}... may enrol into {fleet['name']} again",
        {"lifted": args.ek_sha256.lower()},
    )
    return 0
