"""``bastion fleet attestation|golden``: a fleet's attestation settings and golden values.

* ``attestation FLEET [--gating on|off] [--interval S] [--svn-floor N]
  [--pcrs sha256:0,4,...] [--posture-policy FILE] [--product-key PEM]`` shows the
  settings, or changes the given ones (admin);
* ``golden set FLEET --image-statement FILE`` accepts a signed golden-values statement
  (``bastion image golden``; the server verifies it with the fleet's product key),
  ``golden list FLEET``, ``golden remove FLEET ID``.

Thin: each command is one call to ``/v1/fleets/{fleet}/attestation...``
(docs/attestation.md).
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.cli import _fleet_http as api
from bastion.cli._common import add_json_flag, emit
from bastion.formats import strict_json
from bastion.io.files import read_bounded


def _flags(parser: argparse.ArgumentParser) -> None:
    api.add_server_flags(parser)
    add_json_flag(parser)


def register(sub: Any) -> None:
    """Add ``attestation`` and ``golden`` to the ``fleet`` group."""
    at = sub.add_parser("attestation", help="show or change the fleet's attestation settings")
    at.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    at.add_argument("--gating", choices=("on", "off"), help="refuse config/secrets when stale")
    at.add_argument("--interval", type=int, metavar="SECONDS", help="verdict lifetime")
    at.add_argument("--svn-floor", type=int, metavar="N", help="lowest accepted security version")
    at.add_argument("--pcrs", metavar="SELECTION", help="quoted PCRs, e.g. sha256:0,4,7,11,15")
    at.add_argument("--posture-policy", type=Path, metavar="FILE", help="JSON posture policy")
    at.add_argument("--product-key", type=Path, metavar="PEM", help="image key (public, PEM)")
    _flags(at)
    at.set_defaults(func=_settings)

    g = sub.add_parser("golden", help="the fleet's signed golden values (accepted releases)")
    g_sub = g.add_subparsers(dest="golden_command", metavar="SUBCOMMAND", required=True)
    gs = g_sub.add_parser("set", help="accept a signed golden-values statement")
    gs.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    gs.add_argument("--image-statement", type=Path, required=True, metavar="FILE")
    _flags(gs)
    gs.set_defaults(func=_golden_set)
    gl = g_sub.add_parser("list", help="the accepted golden-value sets")
    gl.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    _flags(gl)
    gl.set_defaults(func=_golden_list)
    gr = g_sub.add_parser("remove", help="stop accepting one golden-value set")
    gr.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    gr.add_argument("golden_id", metavar="ID")
    _flags(gr)
    gr.set_defaults(func=_golden_remove)


def _settings_text(s: dict[str, Any]) -> str:
    state = "on" if s["gating"] else "off"
    if s["gating"] and not s["enforced"]:
        state += " (not enforced: no golden values yet)"
    return (
        f"gating {state}; interval {s['interval_seconds']} s; SVN floor {s['svn_floor']}; "
        f"PCRs {s['pcr_selection']}; {s['golden_count']} golden set(s); product key "
        f"{'set' if s['product_key'] else 'not set'}"
    )


def _settings(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.gating:
        changes["gating"] = args.gating == "on"
    if args.interval is not None:
        changes["interval_seconds"] = args.interval
    if args.svn_floor is not None:
        changes["svn_floor"] = args.svn_floor
    if args.pcrs:
        changes["pcr_selection"] = args.pcrs
    if args.posture_policy:
        raw = read_bounded(args.posture_policy, limits.JSON_MAX_SIZE, "posture policy")
        changes["posture_policy"] = strict_json.loads_object(raw, what="posture policy")
    if args.product_key:
        pem = read_bounded(args.product_key, limits.KEY_FILE_MAX_SIZE, "product key")
        changes["product_key"] = pem.decode(errors="replace")
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        path = f"/v1/fleets/{fleet}/attestation"
        out = http.call("PUT", path, changes) if changes else http.call("GET", path)
    emit(args, _settings_text(out), out)
    return 0


def _golden_set(args: argparse.Namespace) -> int:
    raw = read_bounded(args.image_statement, limits.ATTEST_GOLDEN_MAX_SIZE, "golden statement")
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        out = http.call(
            "POST",
            f"/v1/fleets/{fleet}/attestation/golden",
            {"statement": base64.b64encode(raw).decode()},
        )
    emit(
        args,
        f"golden values of {out['version']} (security version {out['security_version']}) "
        f"accepted: id {out['id']}",
        out,
    )
    return 0


def _golden_list(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        rows = http.call("GET", f"/v1/fleets/{fleet}/attestation/golden")
    lines = [
        f"{g['id']}  {g['version']}  svn {g['security_version']}  {g['sha256'][:16]}" for g in rows
    ]
    emit(args, "\n".join(lines) or "no golden values: devices of this fleet cannot pass", rows)
    return 0


def _golden_remove(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        http.call("DELETE", f"/v1/fleets/{fleet}/attestation/golden/{args.golden_id}")
    emit(args, f"golden set {args.golden_id} removed", {"removed": args.golden_id})
    return 0
