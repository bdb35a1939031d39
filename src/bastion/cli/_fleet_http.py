"""Server flags shared by the ``device`` and ``provisioning-key`` commands.

Operator commands go through :class:`bastion.server.client.ApiClient` (server and token
from flags, ``$BASTION_SERVER``/``$BASTION_TOKEN``, or what ``bastion login`` stored;
``--fleet`` is a fleet id, name, or ORG/NAME). The device side (``device provision``)
needs no operator login: only ``--server`` (or ``$BASTION_SERVER``) and, for HTTPS,
``--ca-file``.
"""

from __future__ import annotations

import argparse
import os

from bastion.errors import ConfigError
from bastion.server.client import ApiClient, check_server_url


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--ca-file``."""
    parser.add_argument(
        "--server", metavar="URL", help="fleet server (default: $BASTION_SERVER or your login)"
    )
    parser.add_argument(
        "--ca-file", metavar="PEM", help="CA certificate to verify an HTTPS server with"
    )


def device_server_url(args: argparse.Namespace) -> str:
    """The server a device enrols with: ``--server`` or ``$BASTION_SERVER``."""
    url = getattr(args, "server", None) or os.environ.get("BASTION_SERVER")
    if not url:
        raise ConfigError("no fleet server: give --server URL or set BASTION_SERVER")
    return check_server_url(url)


def operator(args: argparse.Namespace) -> ApiClient:
    """The operator's API client."""
    return ApiClient.from_config(server=args.server, ca_file=getattr(args, "ca_file", None))


def fleet_id(api: ApiClient, ref: str) -> str:
    """A fleet id from an id, a name or ORG/NAME."""
    fleet: str = api.resolve_fleet(ref)["id"]
    return fleet
