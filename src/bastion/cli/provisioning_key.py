"""``bastion provisioning-key create|list|revoke``: keys that can do nothing but enrol.

``create --fleet F`` makes a key (default: 1 hour, 1 use) and writes it, shown once,
to ``--out FILE`` (mode 0600) or prints it. No live key is left that nobody saw: the
output path is probed before the key is made, and if writing it still fails the key
is revoked at once. Options: ``--ttl`` (e.g. 30m, 2h, 7d),
``--uses``, ``--rate`` (enrolment attempts per minute, 0 = unlimited),
``--allow-serial`` and ``--allow-ek-hash`` (repeatable allow-lists).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from bastion.cli import _fleet_http as api
from bastion.cli._common import add_json_flag, emit, text_value
from bastion.errors import ConfigError
from bastion.io.files import atomic_write

_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``90``, ``30m``, ``2h``, ``7d`` -> seconds."""
    match = _TTL_RE.match(text.strip())
    if not match:
        raise ConfigError(f"--ttl {text!r}: expected a number with s, m, h or d, e.g. 1h")
    return int(match.group(1)) * _UNITS[match.group(2)]


def register(subparsers: Any) -> None:
    """Add the ``provisioning-key`` group."""
    parser = subparsers.add_parser(
        "provisioning-key", help="create, list and revoke provisioning keys"
    )
    sub = parser.add_subparsers(dest="pk_command", metavar="SUBCOMMAND")

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)

    c = sub.add_parser("create", help="create a provisioning key for a fleet")
    c.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    c.add_argument("--name", default="provisioning key")
    c.add_argument("--ttl", default="1h", help="lifetime (default 1h)")
    c.add_argument("--uses", type=int, default=1, help="enrolments allowed (default 1)")
    c.add_argument("--rate", type=int, default=600, help="attempts per minute (0: unlimited)")
    c.add_argument("--allow-serial", action="append", default=[], metavar="SERIAL")
    c.add_argument("--allow-ek-hash", action="append", default=[], metavar="SHA256")
    c.add_argument("--out", type=Path, metavar="FILE", help="write the key here (0600)")
    api.add_server_flags(c)
    add_json_flag(c)
    c.set_defaults(func=_create)

    ls = sub.add_parser("list", help="list a fleet's provisioning keys (never the keys)")
    ls.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    api.add_server_flags(ls)
    add_json_flag(ls)
    ls.set_defaults(func=_list)

    rv = sub.add_parser("revoke", help="revoke a provisioning key")
    rv.add_argument("key_id", metavar="KEY_ID")
    rv.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    api.add_server_flags(rv)
    add_json_flag(rv)
    rv.set_defaults(func=_revoke)


def _create(args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "ttl_seconds": parse_ttl(args.ttl),
        "max_uses": args.uses,
        "rate_per_minute": args.rate,
        "allow_serials": args.allow_serial,
        "allow_ek_hashes": [h.lower() for h in args.allow_ek_hash],
    }
    if args.out:
        _check_writable(args.out)  # before any key exists
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        created = http.call("POST", f"/v1/fleets/{fleet}/provisioning-keys", body)
        key = created.pop("key")
        if args.out:
            try:
                atomic_write(args.out, (key + "\n").encode(), mode=0o600)
            except BaseException as exc:
                # nobody has seen this key: it must not stay live
                http.call("DELETE", f"/v1/fleets/{fleet}/provisioning-keys/{created['id']}")
                raise ConfigError(
                    f"could not write the provisioning key to {str(args.out)!r} ({exc}); "
                    f"key {created['id']} was revoked"
                ) from exc
    if args.out:
        text = (
            f"provisioning key {created['id']} written to {args.out} "
            f"(expires {text_value(created.get('expires_at'))})"
        )
    else:
        uses = "unlimited" if created.get("max_uses") is None else created["max_uses"]
        text = (
            f"{key}\n(shown once; expires {text_value(created.get('expires_at'))}, {uses} use(s))"
        )
        created["key"] = key
    emit(args, text, created)
    return 0


def _check_writable(path: Path) -> None:
    """ConfigError unless a file can be written at ``path`` (probed with a temporary
    file beside it, removed again)."""
    import os
    import tempfile

    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigError(f"--out {str(path)!r} is a folder, not a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bastion-probe-", dir=folder)
    except OSError as exc:
        raise ConfigError(f"--out {str(path)!r}: cannot write in {str(folder)!r}: {exc}") from exc
    os.close(fd)
    os.unlink(probe)


def _list(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        keys = http.call("GET", f"/v1/fleets/{api.fleet_id(http, args.fleet)}/provisioning-keys")
    lines = [
        f"{k['id']}  {k['prefix']}...  {k['uses']}/{text_value(k.get('max_uses'))} uses  "
        f"expires {text_value(k.get('expires_at'))}"
        f"{'  REVOKED' if k['revoked'] else ''}"
        for k in keys
    ]
    emit(args, "\n".join(lines) or "no provisioning keys", keys)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        http.call("DELETE", f"/v1/fleets/{fleet}/provisioning-keys/{args.key_id}")
    emit(args, f"revoked provisioning key {args.key_id}", {"id": args.key_id, "revoked": True})
    return 0
