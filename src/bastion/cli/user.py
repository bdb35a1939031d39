"""``bastion user``: your own account on the fleet server (password, sessions, re-auth).

* ``bastion user reauth [--password-file F] [--totp CODE | --recovery-code C]`` proves
  password and second factor again: the stored session may make security-relevant
  changes for the next minutes (``limits.REAUTH_MAX_AGE_SECONDS``).
* ``bastion user password [--password-file OLD] [--new-password-file NEW] [--totp CODE
  | --recovery-code C]`` re-authenticates with the old password (and second factor),
  then changes it; your other sessions are revoked.
* ``bastion user sessions [--json]`` lists your live login sessions.
* ``bastion user revoke-session ID`` / ``--all-others`` revokes one session, or every
  one but the calling session.

Account administration by the server's operator (reset a password, disable, enable)
is ``bastion server user ...``, on the database directly.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bastion.cli._account import (
    api,
    client_flags,
    fresh_call,
    reauth_body,
    second_factor_flags,
)
from bastion.cli._common import emit
from bastion.errors import ConfigError, FormatError


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "user", help="your account: password, sessions, re-authentication"
    )
    sub = parser.add_subparsers(dest="user_command", metavar="SUBCOMMAND", required=True)
    reauth = sub.add_parser("reauth", help="give password (+2FA) again before a sensitive change")
    reauth.add_argument("--password-file", type=Path, metavar="FILE", help="else prompt")
    second_factor_flags(reauth)
    client_flags(reauth)
    reauth.set_defaults(func=_reauth)
    password = sub.add_parser("password", help="change your password")
    password.add_argument("--password-file", type=Path, metavar="FILE", help="current; else prompt")
    password.add_argument(
        "--new-password-file", type=Path, metavar="FILE", help="new; else prompt twice"
    )
    second_factor_flags(password)
    client_flags(password)
    password.set_defaults(func=_password)
    sessions = sub.add_parser("sessions", help="your live login sessions")
    client_flags(sessions)
    sessions.set_defaults(func=_sessions)
    revoke = sub.add_parser("revoke-session", help="revoke a login session")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("session_id", nargs="?", metavar="ID", help="a session id (user sessions)")
    which.add_argument(
        "--all-others", action="store_true", help="every session but the one you are using"
    )
    client_flags(revoke)
    revoke.set_defaults(func=_revoke)


def _reauth(args: argparse.Namespace) -> int:
    from bastion.cli.server import read_password

    password = read_password(args.password_file)
    with api(args) as client:
        answer = client.call("POST", "/v1/auth/reauth", reauth_body(password, args))
    emit(args, f"re-authenticated: sensitive changes allowed until {answer['fresh_until']}", answer)
    return 0


def _new_password(path: Path | None) -> str:
    from bastion.cli.server import read_password

    new = read_password(path, "new password: ")
    if path is None and read_password(None, "new password again: ") != new:
        raise ConfigError("the two new passwords differ")
    if not new:
        raise FormatError("empty new password")
    return new


def _password(args: argparse.Namespace) -> int:
    from bastion.cli.server import read_password

    current = read_password(args.password_file, "current password: ")
    new = _new_password(args.new_password_file)
    with api(args) as client:
        client.call("POST", "/v1/auth/reauth", reauth_body(current, args))
        answer = fresh_call(
            client,
            "POST",
            "/v1/me/password",
            {"current_password": current, "new_password": new},
        )
    emit(
        args,
        f"password changed; {answer['sessions_revoked']} other session(s) revoked",
        answer,
    )
    return 0


def _sessions(args: argparse.Namespace) -> int:
    with api(args) as client:
        rows = client.call("GET", "/v1/me/sessions")
    lines = [
        f"{r['id']}  {'*' if r['current'] else ' '} {r['name']:<32} "
        f"since {r['created_at']}  expires {r['expires_at']}" + ("  2fa" if r["two_factor"] else "")
        for r in rows
    ]
    emit(args, "\n".join(lines) or "no sessions", rows)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with api(args) as client:
        if args.all_others:
            answer = fresh_call(client, "DELETE", "/v1/me/sessions")
            emit(args, f"{answer['revoked']} other session(s) revoked", answer)
            return 0
        fresh_call(client, "DELETE", f"/v1/me/sessions/{args.session_id}")
    emit(args, f"session {args.session_id} revoked", {"revoked": args.session_id})
    return 0
