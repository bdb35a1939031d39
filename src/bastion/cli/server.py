"""``bastion server``: run the fleet server, verify its audit log, add operator accounts.

* ``bastion server [--data-dir DIR] [--listen HOST:PORT] [--database-url URL]
  [--tls-cert PEM --tls-key PEM [--client-ca PEM]] [--workers N] [--bus BUS]
  [--require-signed-device-requests]`` serves the API (uvicorn). Plain HTTP is refused on a
  non-loopback address. ``--workers N`` (N > 1) runs N processes on one port and needs
  PostgreSQL. ``--bus`` picks how notices reach the other processes: ``auto`` (the
  default), ``local``, ``postgres`` (LISTEN/NOTIFY) or a NATS server's URL
  (``nats://127.0.0.1:4222`` on loopback, ``tls://HOST:PORT`` elsewhere). With
  ``--require-signed-device-requests`` devices must sign every request in their TPM
  (RFC 9421): device API keys and client certificates are refused.
* ``bastion server audit verify [--checkpoint FILE]`` checks the whole hash chain and
  the MACs of the audit log (and that it still holds a checkpoint's entry).
* ``bastion server audit checkpoint [--out FILE]`` exports the signed head for an auditor;
  ``bastion server audit checkpoint-verify FILE --key KEY`` checks one offline.
* ``bastion server sweep`` applies device log/event retention and quotas (for a timer).
* ``bastion server init [--data-dir DIR] [--database-url URL]`` creates the data folder
  (0700), the database (SQLite file 0600, migrated) and the secret key (0600) that seals
  stored TOTP seeds. Nothing else creates a missing data folder from the CLI.
* ``bastion server user add EMAIL [--password-file F]`` creates an operator account
  directly in the database (the first account of a new server). A missing data folder
  is refused with a message naming it (run ``server init`` first), so a mistyped
  ``--data-dir`` never silently starts a second, empty server.
* ``bastion server user reset-password EMAIL [--password-file F]``, ``... disable
  EMAIL`` and ``... enable EMAIL`` administer an account on the database directly
  (whoever runs the server is its administrator; the API has no server-wide admin).
  Reset and disable revoke every session and personal token of the account at once.
"""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.cli._common import add_json_flag, emit
from bastion.errors import ConfigError, FormatError
from bastion.io.files import read_bounded

DEFAULT_LISTEN = "127.0.0.1:8443"


def _db_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default,
        metavar="DIR",
        help="server state folder (default: $BASTION_SERVER_DATA_DIR or /var/lib/bastion/server)",
    )
    parser.add_argument(
        "--database-url",
        default=default,
        metavar="URL",
        help="postgresql://user@host/db (default: SQLite file in the data folder)",
    )
    parser.add_argument(
        "--audit-key",
        default=default,
        metavar="URI",
        help="audit key: file:PATH or tpm:BACKEND#KEYFILE (default: DATA_DIR/audit.key, HMAC)",
    )


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "server", help="run the fleet server; verify its audit log; add operators"
    )
    _db_flags(parser, suppress=False)
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate chain")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="server private key")
    parser.add_argument(
        "--client-ca", type=Path, metavar="PEM", help="CA that signs device client certificates"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port (N > 1 needs PostgreSQL)",
    )
    parser.add_argument(
        "--bus",
        metavar="BUS",
        help="notices between server processes: auto, local, postgres, or a NATS server "
        "nats://127.0.0.1:PORT (loopback) / tls://HOST:PORT (default: auto)",
    )
    parser.add_argument(
        "--require-signed-device-requests",
        action="store_true",
        default=None,
        help="refuse device API keys and client certificates: devices sign every request",
    )
    parser.set_defaults(func=_serve)
    sub = parser.add_subparsers(dest="server_command", metavar="SUBCOMMAND")

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    verify = audit_sub.add_parser("verify", help="verify the audit hash chain")
    _db_flags(verify, suppress=True)
    add_json_flag(verify)
    verify.add_argument(
        "--checkpoint", type=Path, metavar="FILE", help="a checkpoint the chain must still hold"
    )
    verify.set_defaults(func=_audit_verify)
    cp = audit_sub.add_parser("checkpoint", help="export the signed chain head for an auditor")
    _db_flags(cp, suppress=True)
    cp.add_argument("--out", type=Path, metavar="FILE", help="write here (default: stdout)")
    add_json_flag(cp)
    cp.set_defaults(func=_audit_checkpoint)
    cpv = audit_sub.add_parser(
        "checkpoint-verify", help="check a checkpoint file offline (no database)"
    )
    cpv.add_argument("file", type=Path, metavar="FILE")
    cpv.add_argument(
        "--key",
        required=True,
        type=Path,
        metavar="KEY",
        help="the audit HMAC key file, or the Signer key's public key or certificate (PEM)",
    )
    add_json_flag(cpv)
    cpv.set_defaults(func=_audit_checkpoint_verify)

    sweep = sub.add_parser("sweep", help="apply device log/event retention and quotas")
    _db_flags(sweep, suppress=True)
    add_json_flag(sweep)
    sweep.set_defaults(func=_sweep)

    init = sub.add_parser("init", help="create the data folder, database and secret key")
    _db_flags(init, suppress=True)
    add_json_flag(init)
    init.set_defaults(func=_init)

    user = sub.add_parser("user", help="operator accounts")
    user_sub = user.add_subparsers(dest="user_command", metavar="SUBCOMMAND", required=True)
    add = user_sub.add_parser("add", help="create an operator account")
    add.add_argument("email")
    add.add_argument("--password-file", type=Path, metavar="FILE", help="else prompt")
    _db_flags(add, suppress=True)
    add_json_flag(add)
    add.set_defaults(func=_user_add)
    reset = user_sub.add_parser(
        "reset-password", help="set a new password; every session and token of the user dies"
    )
    reset.add_argument("email")
    reset.add_argument("--password-file", type=Path, metavar="FILE", help="else prompt")
    _db_flags(reset, suppress=True)
    add_json_flag(reset)
    reset.set_defaults(func=_user_reset_password)
    for name, helptext in (
        ("disable", "refuse the account; every session and token of the user dies"),
        ("enable", "allow a disabled account to log in again"),
    ):
        toggle = user_sub.add_parser(name, help=helptext)
        toggle.add_argument("email")
        _db_flags(toggle, suppress=True)
        add_json_flag(toggle)
        toggle.set_defaults(func=_user_set_disabled, disable=name == "disable")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ConfigError if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8443")
    return host.strip("[]"), int(port_text)


def settings_from(args: argparse.Namespace, **extra: Any) -> Any:
    """ServerSettings from the flags (environment variables fill the rest)."""
    from pydantic import ValidationError

    from bastion.server.settings import ServerSettings

    values: dict[str, Any] = dict(extra)
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        values["data_dir"] = data_dir
    url = getattr(args, "database_url", None)
    if url:
        values["database_url"] = url
    audit_key = getattr(args, "audit_key", None)
    if audit_key:
        values["audit_key"] = audit_key
    try:
        return ServerSettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ConfigError(f"server setting {where}: {first.get('msg')}") from exc


def bus_settings(value: str | None) -> dict[str, str]:
    """The settings ``--bus`` stands for: a backend name, or a NATS server's URL."""
    if value is None:
        return {}
    if "://" in value:
        from bastion.server.bus_nats import check_nats_url

        return {"bus_backend": "nats", "nats_url": check_nats_url(value)}
    if value not in ("auto", "local", "postgres"):
        raise ConfigError(
            f"--bus {value!r}: expected auto, local, postgres, nats://HOST:PORT or tls://HOST:PORT"
        )
    return {"bus_backend": value}


def _serve(args: argparse.Namespace) -> int:
    from bastion.server.tlsproto import serve

    host, port = parse_listen(args.listen)
    settings = settings_from(
        args,
        listen_host=host,
        listen_port=port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        **({"require_signed_device_requests": True} if args.require_signed_device_requests else {}),
        **bus_settings(args.bus),
    )
    settings.check_listen()
    serve(settings, workers=args.workers)
    return 0


def _open_db(args: argparse.Namespace, *, need_db: bool = True) -> Any:
    """Settings and a migrated Database; never creates a missing data folder."""
    from bastion.server.db.engine import Database
    from bastion.server.secretbox import load_secret_box

    settings = settings_from(args)
    if settings.database_url is None:
        if not settings.data_dir.is_dir():
            raise ConfigError(
                f"data folder {settings.data_dir} does not exist: create it with "
                f"'bastion server init --data-dir {settings.data_dir}' or give --data-dir"
            )
        if need_db and not (settings.data_dir / "bastion.db").exists():
            raise ConfigError(f"no server database in {settings.data_dir} (give --data-dir)")
    db = Database(settings.resolved_database_url())
    try:
        db.upgrade(secret_box=lambda: load_secret_box(settings.resolved_secret_key(), create=False))
        from bastion.io.clock import SystemClock
        from bastion.server.audit.keys import install_audit_key

        # user add may make the first database of an initialised folder, and its audit key
        install_audit_key(settings, db, SystemClock().now(), create=not need_db)
    except BaseException:
        db.dispose()
        raise
    return settings, db


def _init(args: argparse.Namespace) -> int:
    from bastion.server.db.engine import Database, ensure_private_dir, redact
    from bastion.server.secretbox import load_secret_box

    settings = settings_from(args)
    ensure_private_dir(settings.data_dir)
    key_uri = settings.resolved_secret_key()
    box = load_secret_box(key_uri, create=True)
    db = Database(settings.resolved_database_url())
    try:
        db.upgrade(secret_box=lambda: box)
        from bastion.io.clock import SystemClock
        from bastion.server.audit.keys import install_audit_key

        install_audit_key(settings, db, SystemClock().now(), create=True)
    finally:
        db.dispose()
    url = redact(settings.resolved_database_url())
    emit(
        args,
        f"server initialised: data folder {settings.data_dir}, database {url}, "
        f"secret key {key_uri} (id {box.key_id})",
        {
            "data_dir": str(settings.data_dir),
            "database": url,
            "secret_key": key_uri,
            "key_id": box.key_id,
        },
    )
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from bastion.server.audit.chain import verify_checkpoint
    from bastion.server.audit.keys import session_key
    from bastion.server.audit.service import verify_chain

    checkpoint_bytes = None
    if args.checkpoint is not None:
        checkpoint_bytes = read_bounded(
            args.checkpoint, limits.AUDIT_CHECKPOINT_MAX_SIZE, "audit checkpoint"
        )
    _settings, db = _open_db(args)
    try:
        with db.session(write=False) as session:
            checkpoint = None
            if checkpoint_bytes is not None:
                checkpoint = verify_checkpoint(checkpoint_bytes, session_key(session))
            report = verify_chain(session, checkpoint)
    finally:
        db.dispose()
    extra = f", holds checkpoint entry {report.checkpoint_seq}" if checkpoint else ""
    emit(
        args,
        f"audit log intact: {report.entries} entries, head {report.head_hash}{extra}",
        {
            "ok": True,
            "entries": report.entries,
            "head": report.head_hash,
            "server": report.server_id,
            "key_id": report.key_id,
            "checkpoint_seq": report.checkpoint_seq,
        },
    )
    return 0


def _checkpoint_json(cp: Any) -> dict[str, Any]:
    return {
        "server": cp.server,
        "seq": cp.seq,
        "hash": cp.hash,
        "time": cp.time,
        "alg": cp.alg,
        "key_id": cp.key_id,
    }


def _audit_checkpoint(args: argparse.Namespace) -> int:
    import sys

    from bastion.io.clock import SystemClock
    from bastion.io.files import atomic_write
    from bastion.server.audit.service import checkpoint

    _settings, db = _open_db(args)
    try:
        with db.session(write=False) as session:
            cp = checkpoint(session, SystemClock().now())
    finally:
        db.dispose()
    if args.out is None:
        sys.stdout.write(cp.to_bytes().decode())
        return 0
    atomic_write(args.out, cp.to_bytes(), mode=0o644)
    emit(
        args,
        f"audit checkpoint: entry {cp.seq}, head {cp.hash}, at {cp.time} -> {args.out}",
        _checkpoint_json(cp),
    )
    return 0


def _audit_checkpoint_verify(args: argparse.Namespace) -> int:
    from bastion.server.audit.chain import verify_checkpoint
    from bastion.server.audit.keys import open_audit_verifier

    key = open_audit_verifier(args.key)
    data = read_bounded(args.file, limits.AUDIT_CHECKPOINT_MAX_SIZE, "audit checkpoint")
    cp = verify_checkpoint(data, key)
    emit(
        args,
        f"checkpoint genuine: server {cp.server}, entry {cp.seq}, head {cp.hash}, at {cp.time}",
        {"ok": True, **_checkpoint_json(cp)},
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from bastion.io.clock import SystemClock
    from bastion.server.devices.service import RecordQuota, sweep_records

    settings, db = _open_db(args)
    try:
        with db.session() as session:
            removed = sweep_records(session, SystemClock().now(), RecordQuota.of(settings))
    finally:
        db.dispose()
    emit(args, f"swept {removed} device log/event records", {"removed": removed})
    return 0


def read_password(path: Path | None, prompt: str = "password: ") -> str:
    """A password from a file (first line) or the terminal."""
    if path is not None:
        text = read_bounded(path, limits.PASSWORD_MAX_LENGTH + 2, "password file").decode()
        return text.splitlines()[0] if text else ""
    if not os.isatty(0):
        raise ConfigError("no terminal to prompt for a password: give --password-file")
    first = getpass.getpass(prompt)
    return first


def _user_add(args: argparse.Namespace) -> int:
    from bastion.io.clock import SystemClock
    from bastion.server.auth.passwords import PasswordHasher
    from bastion.server.users import service

    password = read_password(args.password_file)
    if not password:
        raise FormatError("empty password")
    settings, db = _open_db(args, need_db=False)
    try:
        ctx = _cli_context(settings, db, SystemClock(), PasswordHasher)
        with db.session() as session:
            user = service.create_user(ctx, session, args.email, password, "cli:server-user-add")
    finally:
        db.dispose()
    emit(args, f"user {user.email} created (id {user.id})", {"id": user.id, "email": user.email})
    return 0


def _user_reset_password(args: argparse.Namespace) -> int:
    from bastion.io.clock import SystemClock
    from bastion.server.auth.passwords import PasswordHasher
    from bastion.server.users import lifecycle

    password = read_password(args.password_file, "new password: ")
    settings, db = _open_db(args)
    try:
        ctx = _cli_context(settings, db, SystemClock(), PasswordHasher)
        with db.session() as session:
            user, killed = lifecycle.reset_password(
                ctx, session, args.email, password, "cli:server-user-reset-password"
            )
    finally:
        db.dispose()
    emit(
        args,
        f"password of {user.email} reset; {killed} session(s) and token(s) revoked",
        {"id": user.id, "email": user.email, "tokens_revoked": killed},
    )
    return 0


def _user_set_disabled(args: argparse.Namespace) -> int:
    from bastion.io.clock import SystemClock
    from bastion.server.auth.passwords import PasswordHasher
    from bastion.server.users import lifecycle

    word = "disable" if args.disable else "enable"
    settings, db = _open_db(args)
    try:
        ctx = _cli_context(settings, db, SystemClock(), PasswordHasher)
        with db.session() as session:
            user, killed = lifecycle.set_disabled(
                ctx, session, args.email, args.disable, f"cli:server-user-{word}"
            )
    finally:
        db.dispose()
    text = f"{user.email} {word}d"
    if args.disable:
        text += f"; {killed} session(s) and token(s) revoked"
    emit(
        args,
        text,
        {"id": user.id, "email": user.email, "disabled": args.disable, "tokens_revoked": killed},
    )
    return 0


def _cli_context(settings: Any, db: Any, clock: Any, hasher_cls: Any) -> Any:
    from bastion.server.auth.principal import AuthRegistry
    from bastion.server.auth.ratelimit import RateLimiter
    from bastion.server.context import AppContext

    limiter = RateLimiter(1.0, 1, clock.monotonic)
    return AppContext(
        settings=settings,
        db=db,
        clock=clock,
        passwords=hasher_cls(
            settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
        ),
        auth=AuthRegistry(),
        limiter=limiter,
        login_limiter=limiter,
    )
