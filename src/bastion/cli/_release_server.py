"""``bastion release publish|register|list|show|target|keyring|golden``: a fleet's releases.

Server-side release commands (docs/updates.md "Rollouts and device reports"), added to
the ``release`` group by :func:`register`:

* ``publish FLEET BUNDLE``: upload a bundle (the server verifies it against the
  fleet's release keyring before keeping it);
* ``register FLEET --url U --length N --sha256 H --version V --compatible C [--svn N]``:
  a bundle served from an external HTTP/CDN URL;
* ``list FLEET``, ``show FLEET RELEASE``;
* ``target FLEET [RELEASE | --clear]``: show or set the fleet's target release;
* ``keyring FLEET [--set PEM]``: show or replace the release keyring (admin);
* ``golden FLEET RELEASE --statement FILE``: record the release's signed golden values.

Thin: one call each to ``/v1/fleets/{fleet}/releases...``.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.cli import _fleet_http as api
from bastion.cli._common import add_json_flag, emit
from bastion.errors import NotFoundError
from bastion.io.files import read_bounded


def _flags(parser: argparse.ArgumentParser) -> None:
    api.add_server_flags(parser)
    add_json_flag(parser)


def _fleet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fleet", help="fleet id, name, or ORG/NAME")


def register(sub: Any) -> None:
    """Add the server-side subcommands to the ``release`` group's subparsers."""
    p = sub.add_parser("publish", help="upload a bundle into the fleet server's file store")
    _fleet_arg(p)
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    _flags(p)
    p.set_defaults(func=_publish)
    p = sub.add_parser("register", help="register a bundle served from an external URL")
    _fleet_arg(p)
    p.add_argument("--url", required=True)
    p.add_argument("--length", required=True, type=int, help="bundle size in bytes")
    p.add_argument("--sha256", required=True, help="bundle SHA-256 (hex)")
    p.add_argument("--version", required=True, help="release version")
    p.add_argument("--compatible", required=True, help="RAUC compatible string")
    p.add_argument("--svn", type=int, default=0, help="security version")
    _flags(p)
    p.set_defaults(func=_register)
    p = sub.add_parser("list", help="the fleet's releases")
    _fleet_arg(p)
    _flags(p)
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="one release")
    _fleet_arg(p)
    p.add_argument("release", help="release id or version")
    _flags(p)
    p.set_defaults(func=_show)
    p = sub.add_parser("target", help="show or set the fleet's target release")
    _fleet_arg(p)
    p.add_argument("release", nargs="?", help="release id or version")
    p.add_argument("--clear", action="store_true", help="the fleet has no target release")
    _flags(p)
    p.set_defaults(func=_target)
    p = sub.add_parser("keyring", help="show or replace the fleet's release keyring")
    _fleet_arg(p)
    p.add_argument("--set", type=Path, metavar="PEM", help="certificates bundles must chain to")
    _flags(p)
    p.set_defaults(func=_keyring)
    p = sub.add_parser("golden", help="record a release's signed golden values")
    _fleet_arg(p)
    p.add_argument("release", help="release id or version")
    p.add_argument("--statement", type=Path, required=True, metavar="FILE")
    _flags(p)
    p.set_defaults(func=_golden)


def _line(r: dict[str, Any]) -> str:
    where = r["url"] if r["source"] == "url" else "store"
    golden = " golden" if r.get("golden_pcrs") else ""
    return f"{r['id']}  {r['version']}  svn {r['svn']}  {r['length']} B  {where}{golden}"


def resolve_release(http: Any, fleet: str, ref: str) -> dict[str, Any]:
    """A release of the fleet by id or version."""
    rows: list[dict[str, Any]] = http.call("GET", f"/v1/fleets/{fleet}/releases")
    for row in rows:
        if ref in (row["id"], row["version"]):
            return row
    raise NotFoundError(f"no release {ref!r} in this fleet")


def _publish(args: argparse.Namespace) -> int:
    if not args.bundle.is_file():
        raise NotFoundError(f"bundle {str(args.bundle)!r} is not a file")
    with api.operator(args) as http, args.bundle.open("rb") as stream:
        fleet = api.fleet_id(http, args.fleet)
        out = http.upload(f"/v1/fleets/{fleet}/releases", stream)
    golden = out.get("golden_pcrs")
    carried = f"; golden values recorded (PCRs {sorted(golden)})" if golden else ""
    emit(args, f"published {out['version']} (svn {out['svn']}): id {out['id']}{carried}", out)
    return 0


def _register(args: argparse.Namespace) -> int:
    body = {
        "url": args.url,
        "length": args.length,
        "sha256": args.sha256.lower(),
        "version": args.version,
        "compatible": args.compatible,
        "svn": args.svn,
    }
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        out = http.call("POST", f"/v1/fleets/{fleet}/releases/external", body)
    emit(args, f"registered {out['version']} at {out['url']}: id {out['id']}", out)
    return 0


def _list(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        rows = http.call("GET", f"/v1/fleets/{fleet}/releases")
    emit(args, "\n".join(_line(r) for r in rows) or "no releases", rows)
    return 0


def _show(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        row = resolve_release(http, fleet, args.release)
    golden = row.get("golden_pcrs") or {}
    pcrs = "".join(f"\n  golden PCR {i}: {v}" for i, v in sorted(golden.items()))
    emit(args, _line(row) + f"\n  sha256 {row['sha256']}\n  signer {row['signer']}" + pcrs, row)
    return 0


def _target(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        path = f"/v1/fleets/{fleet}/target-release"
        if args.clear:
            out = http.call("PUT", path, {"release_id": None})
        elif args.release:
            release = resolve_release(http, fleet, args.release)
            out = http.call("PUT", path, {"release_id": release["id"]})
        else:
            out = http.call("GET", path)
    rel = out["release"]
    emit(args, f"target release: {rel['version']} ({rel['id']})" if rel else "no target", out)
    return 0


def _keyring(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        path = f"/v1/fleets/{fleet}/release-keyring"
        if args.set:
            pem = read_bounded(args.set, limits.RELEASE_KEYRING_MAX_SIZE, "release keyring")
            out = http.call("PUT", path, {"keyring": pem.decode(errors="replace")})
        else:
            out = http.call("GET", path)
    emit(args, out["keyring"].rstrip(), out)
    return 0


def _golden(args: argparse.Namespace) -> int:
    raw = read_bounded(args.statement, limits.ATTEST_GOLDEN_MAX_SIZE, "golden statement")
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        release = resolve_release(http, fleet, args.release)
        out = http.call(
            "PUT",
            f"/v1/fleets/{fleet}/releases/{release['id']}/golden",
            {"statement": base64.b64encode(raw).decode()},
        )
    emit(
        args, f"golden values recorded for {out['version']}: PCRs {sorted(out['golden_pcrs'])}", out
    )
    return 0
