"""``bastion tuf``: the TUF repository of releases (init, delegate, sign, rotate, renew, status).

``tuf init DIR`` makes root and targets (offline keys, thresholds) and, with the online
keys, snapshot and timestamp; ``tuf delegate`` gives a product its own role;
``tuf sign`` adds a key holder's signature to staged metadata; ``tuf rotate`` changes a
role's keys or threshold in a new root version, guarded by a dry run of every device's
root chain; ``tuf renew`` re-signs snapshot and timestamp (what the server does on a
timer). Keys are key URIs (``file:``, ``tpm:``); ``pub:PATH`` names a public key that
signs later with ``tuf sign``. The work is in :mod:`bastion.build.tuf_repo` and
:mod:`bastion.build.tuf_rotate`; docs/updates.md ("Key ceremony", "Rotation").
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from bastion.build.tuf_repo import (
    KeySpec,
    Renewal,
    TufRepository,
    Written,
    init_repository,
    load_public_spec,
    renew,
)
from bastion.build.tuf_rotate import ROTATABLE, Guarded, Online, rotate, sign_guarded
from bastion.cli._common import add_json_flag, add_passphrase_flag, emit, passphrase_source
from bastion.errors import ConfigError
from bastion.trust.keys import open_signer
from bastion.trust.signer import Signer


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _spec(args: argparse.Namespace, text: str) -> KeySpec:
    if text.startswith("pub:"):
        return load_public_spec(text[4:])
    return open_signer(text, passphrase=passphrase_source(args, text))


def _signer(args: argparse.Namespace, text: str | None) -> Signer | None:
    if not text:
        return None
    spec = _spec(args, text)
    if not isinstance(spec, Signer):
        raise ConfigError(f"{text}: an online key must be a private key URI, not pub:")
    return spec


def _signers(args: argparse.Namespace, texts: list[str] | None) -> list[Signer]:
    out = []
    for text in texts or []:
        s = _signer(args, text)
        assert s is not None
        out.append(s)
    return out


def _written(w: Written | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {
        "role": w.role,
        "version": w.version,
        "published": w.published,
        "signatures": w.signed,
        "threshold": w.threshold,
        "path": str(w.path),
    }


def _written_text(w: Written) -> str:
    state = "published" if w.published else "staged (needs `bastion tuf sign`)"
    return f"{w.role} v{w.version}: {w.signed} of {w.threshold} signatures, {state}"


def _renewal(r: Renewal) -> dict[str, Any]:
    return {
        "role": r.role,
        "version": r.version,
        "expires": r.expires.isoformat(),
        "renewed": r.renewed,
    }


def _repo(path: str) -> TufRepository:
    return TufRepository(Path(path))


def _online(args: argparse.Namespace) -> Online:
    return Online(
        snapshot=_signer(args, getattr(args, "snapshot_key", None)),
        timestamp=_signer(args, getattr(args, "timestamp_key", None)),
        targets=_signers(args, getattr(args, "targets_key", None)),
    )


def _init(args: argparse.Namespace) -> int:
    repo = init_repository(
        Path(args.dir),
        root_keys=[_spec(args, k) for k in args.root_key],
        root_threshold=args.root_threshold,
        targets_keys=[_spec(args, k) for k in args.targets_key],
        targets_threshold=args.targets_threshold,
        snapshot_key=_spec(args, args.snapshot_key),
        timestamp_key=_spec(args, args.timestamp_key),
        now=_now(),
    )
    published = repo.exists()
    root = repo.root().signed if published else repo.staged("root").signed
    emit(
        args,
        f"TUF repository {repo.path}: root v{root.version} "
        f"{'published' if published else 'staged: sign it with `bastion tuf sign DIR root`'}",
        {
            "path": str(repo.path),
            "published": published,
            "roles": {
                name: {"threshold": role.threshold, "keyids": list(role.keyids)}
                for name, role in root.roles.items()
            },
        },
    )
    return 0


def _delegate(args: argparse.Namespace) -> int:
    repo = _repo(args.dir)
    w = repo.delegate(
        args.product,
        [_spec(args, k) for k in args.key],
        args.threshold,
        _signers(args, args.targets_key),
        _now(),
    )
    renewed = _maybe_renew(args, repo) if w.published else None
    emit(
        args,
        _written_text(w),
        {"written": _written(w), "renewed": renewed},
    )
    return 0


def _maybe_renew(args: argparse.Namespace, repo: TufRepository) -> list[dict[str, Any]] | None:
    snap = _signer(args, args.snapshot_key)
    ts = _signer(args, args.timestamp_key)
    if snap is None or ts is None:
        return None
    return [_renewal(r) for r in renew(repo, snap, ts, _now())]


def _guarded_out(args: argparse.Namespace, g: Guarded, what: str) -> int:
    lines = [what]
    if g.written is not None:
        lines.append(_written_text(g.written))
    for view in g.views:
        verdict = "accepts" if view.ok else "REFUSES"
        lines.append(f"device trusting root v{view.trusted_version}: {verdict}")
        for step in view.steps:
            mark = "accept" if step.accepted else "refuse"
            lines.append(f"  {mark} {step.what}: {step.reason}")
    if args.dry_run:
        lines.append("dry run: nothing written")
    emit(
        args,
        "\n".join(lines),
        {
            "dry_run": bool(args.dry_run),
            "ok": g.ok,
            "written": _written(g.written),
            "devices": [v.to_json() for v in g.views],
            "files": sorted(g.files),
        },
    )
    return 0


def _sign(args: argparse.Namespace) -> int:
    g = sign_guarded(
        _repo(args.dir),
        args.role,
        _signers(args, args.key),
        _online(args),
        _now(),
        dry_run=args.dry_run,
        force=args.force,
        bump=args.bump,
    )
    return _guarded_out(args, g, f"sign {args.role}")


def _rotate(args: argparse.Namespace) -> int:
    g = rotate(
        _repo(args.dir),
        role=args.role,
        add=[_spec(args, k) for k in args.add_key or []],
        remove=args.remove_key or [],
        threshold=args.threshold,
        root_signers=_signers(args, args.root_key),
        online=_online(args),
        now=_now(),
        dry_run=args.dry_run,
        force=args.force,
    )
    return _guarded_out(args, g, f"rotate {args.role}")


def _renew(args: argparse.Namespace) -> int:
    snap = _signer(args, args.snapshot_key)
    ts = _signer(args, args.timestamp_key)
    assert snap is not None and ts is not None
    done = renew(_repo(args.dir), snap, ts, _now(), force=args.force)
    emit(
        args,
        "\n".join(
            f"{r.role} v{r.version} until {r.expires.isoformat()}{'' if r.renewed else ' (kept)'}"
            for r in done
        ),
        [_renewal(r) for r in done],
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    repo = _repo(args.dir)
    root = repo.root().signed
    rows = []
    for role in ("root", "targets", "snapshot", "timestamp", *repo.products()):
        md = repo.latest(role)
        rows.append(
            {
                "role": role,
                "version": md.signed.version,
                "expires": md.signed.expires.isoformat(),
                "expired": md.signed.is_expired(_now()),
            }
        )
    staged = (
        sorted(p.stem for p in repo.staged_dir.glob("*.json")) if repo.staged_dir.is_dir() else []
    )
    emit(
        args,
        "\n".join(
            f"{r['role']:<12} v{r['version']:<5} expires {r['expires']}"
            f"{' EXPIRED' if r['expired'] else ''}"
            for r in rows
        )
        + (f"\nstaged: {', '.join(staged)}" if staged else ""),
        {
            "roles": rows,
            "staged": staged,
            "thresholds": {n: r.threshold for n, r in root.roles.items()},
        },
    )
    return 0


def _online_flags(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--snapshot-key", required=required, metavar="URI", help="online snapshot key")
    p.add_argument("--timestamp-key", required=required, metavar="URI", help="online timestamp key")


def register(subparsers: Any) -> None:
    """Add ``tuf init|delegate|sign|rotate|renew|status``."""
    tuf: argparse.ArgumentParser = subparsers.add_parser(
        "tuf", help="the TUF repository of releases: keys, thresholds, rotation, renewal"
    )
    sub = tuf.add_subparsers(dest="tuf_command", required=True)

    p = sub.add_parser("init", help="create root, targets, snapshot and timestamp")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--root-key", action="append", required=True, metavar="URI|pub:PEM")
    p.add_argument("--root-threshold", type=int, default=1)
    p.add_argument("--targets-key", action="append", required=True, metavar="URI|pub:PEM")
    p.add_argument("--targets-threshold", type=int, default=1)
    _online_flags(p, required=True)
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_init)

    p = sub.add_parser("delegate", help="give a product its own role (<product>/*/*)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--product", required=True)
    p.add_argument("--key", action="append", required=True, metavar="URI|pub:PEM")
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--targets-key", action="append", metavar="URI", help="offline targets key")
    _online_flags(p)
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_delegate)

    p = sub.add_parser("sign", help="add signatures to staged metadata (threshold signing)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("role", metavar="ROLE", help="root, targets or a product")
    p.add_argument("--key", action="append", required=True, metavar="URI")
    p.add_argument("--bump", action="store_true", help="sign a new version with a fresh expiry")
    p.add_argument("--targets-key", action="append", metavar="URI")
    _online_flags(p)
    p.add_argument("--dry-run", action="store_true", help="show what devices would accept")
    p.add_argument("--force", action="store_true", help="publish even if a device refuses")
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_sign)

    p = sub.add_parser("rotate", help="change a role's keys or threshold (new root version)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--role", required=True, choices=ROTATABLE)
    p.add_argument("--add-key", action="append", metavar="URI|pub:PEM")
    p.add_argument("--remove-key", action="append", metavar="KEYID", help="key id (prefix)")
    p.add_argument("--threshold", type=int)
    p.add_argument(
        "--root-key", action="append", metavar="URI", help="signs the new root (old and new)"
    )
    p.add_argument("--targets-key", action="append", metavar="URI", help="new targets keys")
    _online_flags(p)
    p.add_argument("--dry-run", action="store_true", help="show what devices would accept")
    p.add_argument("--force", action="store_true", help="publish even if a device refuses")
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_rotate)

    p = sub.add_parser("renew", help="re-sign snapshot and timestamp when due")
    p.add_argument("dir", metavar="DIR")
    _online_flags(p, required=True)
    p.add_argument("--force", action="store_true", help="renew even if not due")
    add_passphrase_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_renew)

    p = sub.add_parser("status", help="versions and expiries of every role")
    p.add_argument("dir", metavar="DIR")
    add_json_flag(p)
    p.set_defaults(func=_status)
