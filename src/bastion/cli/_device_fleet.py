"""``bastion device provision|list|show|revoke``: enrol a device; operators manage devices.

``provision DEV --server URL --provisioning-key FILE`` runs the TPM-bound enrolment from
the device (docs/provisioning.md) with the TPM given by ``--tpm`` (default: a sim
device's own TPM, the one that measured its boot, software or swtpm; else the software
TPM in ``DEV/tpm.state``), stores the identity in the folder DEV (``identity.json``
0600, ``device.pem``) and deletes the provisioning key file. ``list``, ``show`` and
``revoke`` are operator commands against ``/v1/fleets/{fleet}/devices`` (token from
``$BASTION_TOKEN``).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion.cli import _fleet_http as api
from bastion.cli._common import add_json_flag, add_tpm_flag, emit, text_value

if TYPE_CHECKING:
    from bastion.tpm.base import Tpm


def register(subparsers: Any) -> None:
    """Add provision, list, show and revoke to the ``device`` group."""
    p = subparsers.add_parser("provision", help="enrol this device with a fleet server (TPM-bound)")
    p.add_argument("dev", metavar="DEV", type=Path, help="device state folder (identity goes here)")
    p.add_argument(
        "--provisioning-key",
        required=True,
        type=Path,
        metavar="FILE",
        help="file holding the bst_pk_ key (deleted after a successful enrolment)",
    )
    p.add_argument("--serial", help="device serial (default: the folder name)")
    p.add_argument("--fleet", metavar="FLEET_ID", help="refuse unless the key is for this fleet id")
    api.add_server_flags(p)
    add_tpm_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_provision)

    ls = subparsers.add_parser("list", help="list a fleet's devices (operator)")
    ls.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    api.add_server_flags(ls)
    add_json_flag(ls)
    ls.set_defaults(func=_list)

    show = subparsers.add_parser("show", help="show one device (operator)")
    show.add_argument("device_id", metavar="DEVICE_ID")
    show.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    api.add_server_flags(show)
    add_json_flag(show)
    show.set_defaults(func=_show)

    rv = subparsers.add_parser(
        "revoke", help="revoke a device: refused from now on, cert on the CRL"
    )
    rv.add_argument("device_id", metavar="DEVICE_ID")
    rv.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    api.add_server_flags(rv)
    add_json_flag(rv)
    rv.set_defaults(func=_revoke)


def _provision(args: argparse.Namespace) -> int:
    from bastion import limits
    from bastion.device.provision import provision_from_files
    from bastion.io.http import HttpClient

    dev: Path = args.dev
    dev.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = api.device_server_url(args)
    with (
        _device_tpm(dev, args.tpm) as tpm,
        HttpClient(
            url, ca_file=getattr(args, "ca_file", None), max_response=limits.HTTP_MAX_BODY
        ) as http,
    ):
        identity = provision_from_files(
            tpm,
            server_url=url,
            key_file=args.provisioning_key,
            serial=args.serial or dev.resolve().name,
            state_dir=dev,
            http=http,
            fleet_id=args.fleet,
        )
    emit(
        args,
        f"enrolled device {identity.device_id} in fleet {identity.fleet_id}; identity in "
        f"{dev / 'identity.json'}; provisioning key {args.provisioning_key} deleted",
        {"device_id": identity.device_id, "fleet_id": identity.fleet_id, "state_dir": str(dev)},
    )
    return 0


@contextlib.contextmanager
def _device_tpm(dev: Path, spec: str | None) -> Iterator[Tpm]:
    """``--tpm`` when given; else a sim device's own TPM (the one that measured its
    boot: software or swtpm, from DEV/device.json); else the software TPM in DEV."""
    from bastion.device.platform.sim import DEVICE_FILE, SimPlatform
    from bastion.tpm.uri import open_tpm

    if not spec and (dev / DEVICE_FILE).exists():
        with SimPlatform(dev).attached_tpm() as tpm:
            yield tpm
        return
    tpm = open_tpm(spec, default_state_dir=dev)
    try:
        yield tpm
    finally:
        tpm.close()


def _line(d: dict[str, Any]) -> str:
    trust = d.get("ek_trust") or "-"
    flag = "  (DEVELOPMENT: no TPM hardware proof)" if trust == "any" else ""
    return (
        f"{d['id']}  {d['status']:<8} {d['serial']:<24} ek {trust:<10} "
        f"last seen {d.get('last_seen_at') or '-'}{flag}"
    )


def _list(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        devices = http.call("GET", f"/v1/fleets/{api.fleet_id(http, args.fleet)}/devices")
    emit(args, "\n".join(_line(d) for d in devices) or "no devices", devices)
    return 0


def _show(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        device = http.call("GET", f"/v1/fleets/{fleet}/devices/{args.device_id}")
    text = "\n".join(f"{k}: {text_value(v)}" for k, v in device.items() if k != "certificate")
    emit(args, text, device)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        device = http.call("POST", f"/v1/fleets/{fleet}/devices/{args.device_id}/revoke")
    emit(
        args,
        f"revoked device {device['id']} (certificate {device['cert_serial']} on the CRL)",
        device,
    )
    return 0
