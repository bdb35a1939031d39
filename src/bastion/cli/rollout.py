"""``bastion rollout start|status|list|pause|resume|abort|tag``: roll a release out in waves.

* ``start FLEET --release REL --wave NAME:SELECTOR[:success=N][:failure=N] ... [--canary]``
  where SELECTOR is ``P%`` (a share of the fleet), ``tag=T`` or ``devices=ID+ID``;
  ``--canary`` makes the first wave the canary (its thresholds pause the rollout);
* ``status FLEET [ROLLOUT]`` (default: the newest): each wave's devices by result, and
  the devices that fell back or failed with the reason from their signed report;
* ``list FLEET``; ``pause|resume|abort FLEET ROLLOUT``;
* ``tag FLEET DEVICE TAG [--remove]``: the tags waves select by.

Thin: one call each to ``/v1/fleets/{fleet}/rollouts...`` (docs/updates.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from bastion.cli import _fleet_http as api
from bastion.cli._common import add_json_flag, emit
from bastion.cli._release_server import resolve_release
from bastion.errors import ConfigError, NotFoundError


def _flags(parser: argparse.ArgumentParser) -> None:
    api.add_server_flags(parser)
    add_json_flag(parser)


def register(subparsers: Any) -> None:
    """Add the ``rollout`` group."""
    group = subparsers.add_parser("rollout", help="roll a release out to a fleet in waves")
    sub = group.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("start", help="start a rollout")
    p.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    p.add_argument("--release", required=True, help="release id or version")
    p.add_argument(
        "--wave",
        action="append",
        required=True,
        metavar="NAME:SELECTOR[:success=N][:failure=N]",
        help="a wave, in order; SELECTOR is P%%, tag=T or devices=ID+ID",
    )
    p.add_argument("--canary", action="store_true", help="the first wave is the canary")
    _flags(p)
    p.set_defaults(func=_start)
    p = sub.add_parser("status", help="progress per wave and the devices that went wrong")
    p.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    p.add_argument("rollout", nargs="?", help="rollout id (default: the newest)")
    _flags(p)
    p.set_defaults(func=_status)
    p = sub.add_parser("list", help="the fleet's rollouts")
    p.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    _flags(p)
    p.set_defaults(func=_list)
    for action, text in (
        ("pause", "stop handing the release to devices that have not started"),
        ("resume", "continue (the failures so far are acknowledged)"),
        ("abort", "end the rollout; devices get the fleet target again"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("fleet", help="fleet id, name, or ORG/NAME")
        p.add_argument("rollout", help="rollout id")
        _flags(p)
        p.set_defaults(func=_act, action=action)
    p = sub.add_parser("tag", help="tag a device (or --remove the tag)")
    p.add_argument("fleet", help="fleet id, name, or ORG/NAME")
    p.add_argument("device", help="device id")
    p.add_argument("tag")
    p.add_argument("--remove", action="store_true")
    _flags(p)
    p.set_defaults(func=_tag)


def parse_wave(text: str) -> dict[str, Any]:
    """``NAME:SELECTOR[:success=N][:failure=N]`` -> the API's wave object."""
    parts = text.split(":")
    if len(parts) < 2 or not parts[0]:
        raise ConfigError(f"--wave {text!r}: expected NAME:SELECTOR[:success=N][:failure=N]")
    wave: dict[str, Any] = {"name": parts[0]}
    selector = parts[1]
    try:
        if selector.endswith("%"):
            wave["percent"] = int(selector[:-1])
        elif selector.startswith("tag="):
            wave["tag"] = selector[4:]
        elif selector.startswith("devices="):
            wave["devices"] = [d for d in selector[8:].split("+") if d]
        else:
            raise ConfigError(f"--wave {text!r}: selector must be P%, tag=T or devices=ID+ID")
        for option in parts[2:]:
            key, _, value = option.partition("=")
            if key not in ("success", "failure"):
                raise ConfigError(f"--wave {text!r}: unknown option {key!r}")
            wave[f"{key}_percent"] = int(value)
    except ValueError as exc:
        raise ConfigError(f"--wave {text!r}: {exc}") from exc
    return wave


def _status_text(s: dict[str, Any]) -> str:
    head = f"rollout {s['id']} of {s['version']}: {s['state']}"
    if s.get("paused_reason"):
        head += f" ({s['paused_reason']})"
    lines = [head]
    for w in s["waves"]:
        kind = "canary " if w["canary"] else ""
        lines.append(
            f"  wave {w['position']} {kind}{w['name']} [{w['state']}]: {w['assigned']} devices, "
            f"{w['committed']} committed, {w['installed']} installed, {w['pending']} pending, "
            f"{w['fell_back']} fell back, {w['failed']} failed"
        )
    for p in s["problems"]:
        result = "fell back" if p["result"] == "fell_back" else p["result"]
        lines.append(f"  {p['device_id']}: {result}: {p['reason'] or '(no reason given)'}")
    return "\n".join(lines)


def _start(args: argparse.Namespace) -> int:
    waves = [parse_wave(w) for w in args.wave]
    if args.canary:
        waves[0]["canary"] = True
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        release = resolve_release(http, fleet, args.release)
        out = http.call(
            "POST", f"/v1/fleets/{fleet}/rollouts", {"release_id": release["id"], "waves": waves}
        )
    emit(args, _status_text(out), out)
    return 0


def _status(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        rollout = args.rollout
        if rollout is None:
            rows = http.call("GET", f"/v1/fleets/{fleet}/rollouts")
            if not rows:
                raise NotFoundError("the fleet has no rollout")
            rollout = rows[0]["id"]
        out = http.call("GET", f"/v1/fleets/{fleet}/rollouts/{rollout}")
    emit(args, _status_text(out), out)
    return 0


def _list(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        rows = http.call("GET", f"/v1/fleets/{fleet}/rollouts")
    lines = [
        f"{r['id']}  {r['state']}  wave {r['active_wave']}  release {r['release_id']}" for r in rows
    ]
    emit(args, "\n".join(lines) or "no rollouts", rows)
    return 0


def _act(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        out = http.call("POST", f"/v1/fleets/{fleet}/rollouts/{args.rollout}/{args.action}")
    emit(args, _status_text(out), out)
    return 0


def _tag(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        path = f"/v1/fleets/{fleet}/devices/{args.device}/tags/{args.tag}"
        http.call("DELETE" if args.remove else "PUT", path)
        tags = http.call("GET", f"/v1/fleets/{fleet}/devices/{args.device}/tags")
    emit(args, f"{args.device}: tags {', '.join(tags['tags']) or '(none)'}", tags)
    return 0
