"""``bastion totp``: turn the TOTP second factor of your account on or off.

* ``bastion totp enable [--code CODE]`` starts enrolment, shows the ``otpauth://`` URI
  (as a QR code when the ``qrcode`` package is installed, else with the secret spelled
  out), asks for the current code to confirm, and prints the recovery codes once.
* ``bastion totp disable [--code CODE]`` turns it off.

Both need a fresh session (``bastion login`` or ``bastion user reauth`` moments ago;
for ``disable`` one that gave the second factor). A code not given as ``--code`` is
asked on the terminal, or read as one line of standard input.
"""

from __future__ import annotations

import argparse
import importlib
import io
from typing import Any

from bastion.cli._account import api, client_flags, fresh_call, info, read_code
from bastion.cli._common import emit


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "totp", help="the TOTP second factor of your account"
    )
    sub = parser.add_subparsers(dest="totp_command", metavar="SUBCOMMAND", required=True)
    enable = sub.add_parser("enable", help="enrol an authenticator app; get recovery codes")
    enable.add_argument("--code", metavar="CODE", help="current code (else asked)")
    client_flags(enable)
    enable.set_defaults(func=_enable)
    disable = sub.add_parser("disable", help="turn the second factor off")
    disable.add_argument("--code", metavar="CODE", help="current code (else asked)")
    client_flags(disable)
    disable.set_defaults(func=_disable)


def qr_text(uri: str) -> str | None:
    """``uri`` as a terminal QR code, or None without the optional ``qrcode`` package."""
    try:
        qrcode: Any = importlib.import_module("qrcode")
    except ImportError:
        return None
    code = qrcode.QRCode(border=1)
    code.add_data(uri)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


def _enable(args: argparse.Namespace) -> int:
    with api(args) as client:
        begun = fresh_call(client, "POST", "/v1/me/totp")
        picture = qr_text(begun["uri"])
        info(args, "add this account to your authenticator app:")
        if picture is not None:
            info(args, picture)
        else:
            info(args, f"secret: {begun['secret']}")
        info(args, f"otpauth URI: {begun['uri']}")
        code = read_code(args.code, "current code from the app: ")
        done = client.call("POST", "/v1/me/totp/confirm", {"code": code})
    codes: list[str] = done["recovery_codes"]
    text = (
        "TOTP enabled. Recovery codes (each works once; store them now, they are not "
        "shown again):\n" + "\n".join(f"  {c}" for c in codes)
    )
    emit(args, text, {"enabled": True, "uri": begun["uri"], "recovery_codes": codes})
    return 0


def _disable(args: argparse.Namespace) -> int:
    code = read_code(args.code, "current code from the app: ")
    with api(args) as client:
        fresh_call(client, "POST", "/v1/me/totp/disable", {"code": code})
    emit(args, "TOTP disabled; recovery codes deleted", {"enabled": False})
    return 0
