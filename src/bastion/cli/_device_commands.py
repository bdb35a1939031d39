"""Operator remote control: ``bastion device exec|reboot|commands`` (ADR 0033).

``exec DEVICE_ID KIND --fleet F [--unit UNIT] [--ttl SECONDS] [--confirm DEVICE_ID]
[--wait SECONDS]`` queues a command (operator and above): ``reboot``,
``restart-service`` (``--unit``), ``attest``, ``check-update``, ``collect-logs``,
``rotate-key``, ``wipe`` (``--confirm`` with the device id). ``reboot DEVICE_ID`` is
``exec DEVICE_ID reboot``; an attestation on demand is ``exec DEVICE_ID attest``
(``device attest DEV`` is the device-side round). With ``--wait`` the command polls
until the command finished or expired and exits 2 if it failed or expired.
``commands DEVICE_ID --fleet F [--limit N] [--json]`` lists a device's commands.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bastion.cli import _fleet_http as api
from bastion.cli._common import add_json_flag, emit

KINDS = (
    "reboot",
    "restart-service",
    "attest",
    "check-update",
    "collect-logs",
    "rotate-key",
    "wipe",
)
FINAL = ("succeeded", "failed", "expired", "cancelled")


def register(subparsers: Any) -> None:
    """Add exec, reboot and commands to the ``device`` group."""
    e = subparsers.add_parser("exec", help="queue a command for a device (operator)")
    e.add_argument("device_id", metavar="DEVICE_ID")
    e.add_argument("kind", choices=KINDS, metavar="KIND", help=", ".join(KINDS))
    e.add_argument("--unit", help="restart-service: the systemd unit, e.g. app.service")
    e.add_argument("--confirm", metavar="DEVICE_ID", help="wipe: the device id again")
    _common(e)
    e.set_defaults(func=_exec)

    r = subparsers.add_parser("reboot", help="reboot a device through its agent (operator)")
    r.add_argument("device_id", metavar="DEVICE_ID")
    _common(r)
    r.set_defaults(func=_exec, kind="reboot", unit=None, confirm=None)

    c = subparsers.add_parser("commands", help="a device's commands and their results")
    c.add_argument("device_id", metavar="DEVICE_ID")
    c.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    c.add_argument("--limit", type=int, default=50, metavar="N")
    api.add_server_flags(c)
    add_json_flag(c)
    c.set_defaults(func=_list)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    p.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="expire after")
    p.add_argument(
        "--wait", type=float, default=0, metavar="SECONDS", help="wait for the result this long"
    )
    api.add_server_flags(p)
    add_json_flag(p)


def _line(c: dict[str, Any]) -> str:
    out = (c.get("output") or "").replace("\n", " ")[:80]
    return f"{c['id']}  {c['kind']:<15} {c['status']:<9} {c['created_at']}  {out}"


def _exec(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"kind": args.kind, "ttl_seconds": args.ttl, "args": {}}
    if args.unit:
        body["args"]["unit"] = args.unit
    if args.confirm:
        body["confirm"] = args.confirm
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        base = f"/v1/fleets/{fleet}/devices/{args.device_id}/commands"
        command = http.call_object("POST", base, body)
        deadline = time.monotonic() + args.wait
        while args.wait and command["status"] not in FINAL and time.monotonic() < deadline:
            time.sleep(0.5)
            command = http.call_object("GET", f"{base}/{command['id']}")
    emit(args, _line(command), command)
    if args.wait and command["status"] != "succeeded":
        return 2
    return 0


def _list(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        rows = http.call(
            "GET", f"/v1/fleets/{fleet}/devices/{args.device_id}/commands?limit={args.limit}"
        )
    emit(args, "\n".join(_line(c) for c in rows) or "no commands", rows)
    return 0
