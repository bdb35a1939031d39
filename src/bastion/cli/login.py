"""``bastion login``: get a session (or store an API token) for the operator commands.

``bastion login --server URL --email E [--password-file F] [--totp CODE |
--recovery-code C] [--ca-file PEM]`` logs in and stores the server, the session token
and the CA file in the operator config (mode 0600, see
:func:`bastion.server.client.config_path`). ``bastion login --server URL --token
bst_pat_...`` stores a personal API token instead (checked against ``/v1/me`` first).
``bastion login --server URL --oidc [--callback-port N] [--totp CODE]`` signs in through
the server's OpenID provider: it prints the URL to open in a browser and waits for the
redirect on ``http://127.0.0.1:N/callback`` (:mod:`bastion.cli._oidc_loopback`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bastion.cli._common import add_json_flag, emit
from bastion.errors import ConfigError


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "login", help="log in to a fleet server (stores the session for other commands)"
    )
    parser.add_argument("--server", metavar="URL", help="fleet server URL (default: stored)")
    parser.add_argument("--email", help="account e-mail")
    parser.add_argument("--password-file", type=Path, metavar="FILE", help="else prompt")
    parser.add_argument("--totp", metavar="CODE", help="6-digit code, when 2FA is enrolled")
    parser.add_argument("--recovery-code", metavar="CODE", help="a recovery code instead")
    parser.add_argument("--token", help="store this personal API token (bst_pat_...) instead")
    parser.add_argument("--ca-file", metavar="PEM", help="CA certificate of an HTTPS server")
    parser.add_argument(
        "--oidc", action="store_true", help="sign in through the server's OpenID provider"
    )
    parser.add_argument(
        "--callback-port",
        type=int,
        default=0,
        metavar="N",
        help="loopback port for the provider's redirect (default: any free port)",
    )
    add_json_flag(parser)
    parser.set_defaults(func=_login)


def _login(args: argparse.Namespace) -> int:
    from bastion.cli.server import read_password
    from bastion.server.client import ApiClient, OperatorConfig, check_server_url

    stored = OperatorConfig.load()
    server = args.server or os.environ.get("BASTION_SERVER") or (stored.server if stored else None)
    if not server:
        raise ConfigError("give --server URL")
    server = check_server_url(server)
    ca_file = args.ca_file or (stored.ca_file if stored else None)
    if args.oidc:
        token, expires = _oidc_login(args, server, ca_file)
        with ApiClient(server, token, ca_file=ca_file) as api:
            me = api.call("GET", "/v1/me")
    elif args.token:
        token = args.token.strip()
        with ApiClient(server, token, ca_file=ca_file) as api:
            me = api.call("GET", "/v1/me")
        expires = None
    else:
        if not args.email:
            raise ConfigError("give --email (or --token)")
        password = read_password(args.password_file)
        body: dict[str, Any] = {"email": args.email, "password": password}
        if args.totp:
            body["totp"] = args.totp
        if args.recovery_code:
            body["recovery_code"] = args.recovery_code
        with ApiClient(server, ca_file=ca_file) as api:
            answer = api.call("POST", "/v1/auth/login", body)
        token = answer["token"]
        expires = answer["expires_at"]
        with ApiClient(server, token, ca_file=ca_file) as api:
            me = api.call("GET", "/v1/me")
    path = OperatorConfig(server=server, token=token, ca_file=ca_file).save()
    emit(
        args,
        f"logged in to {server} as {me['email']}; credentials in {path}",
        {"server": server, "email": me["email"], "expires_at": expires, "config": str(path)},
    )
    return 0


def _oidc_login(args: argparse.Namespace, server: str, ca_file: str | None) -> tuple[str, Any]:
    """The OIDC flow of ``bastion login --oidc``: (session token, expiry)."""
    import sys
    from urllib.parse import urlencode

    from bastion import limits
    from bastion.cli._oidc_loopback import LoopbackReceiver
    from bastion.server.client import ApiClient

    if not 0 <= args.callback_port <= 65535:
        raise ConfigError("--callback-port must be 0 to 65535")
    receiver = LoopbackReceiver(args.callback_port)
    try:
        with ApiClient(server, ca_file=ca_file) as api:  # one client: it keeps the cookie
            url = api.redirect_location(f"/v1/auth/oidc/login?cli_port={receiver.port}")
            print(f"Open this URL in a browser to sign in:\n{url}", file=sys.stderr, flush=True)
            params = receiver.wait(limits.OIDC_LOGIN_TTL_SECONDS)
            query = urlencode({"state": params["state"], "code": params["code"]})
            answer = api.call("GET", f"/v1/auth/oidc/callback?{query}")
            if answer.get("second_factor_required"):
                body: dict[str, Any] = {"ticket": answer["ticket"]}
                if args.recovery_code:
                    body["recovery_code"] = args.recovery_code
                else:
                    body["totp"] = args.totp or input("TOTP code: ").strip()
                answer = api.call("POST", "/v1/auth/oidc/second-factor", body)
    finally:
        receiver.close()
    return str(answer["token"]), answer["expires_at"]
