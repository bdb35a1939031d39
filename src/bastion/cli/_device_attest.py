"""``bastion device attest DEV`` (device side) and ``bastion device verdicts`` (operator).

``attest DEV [--fleet FLEET_ID] [--server URL] [--eventlog FILE] [--posture FILE]
[--posture-root DIR]`` runs one attestation round (:func:`bastion.device.attest.attest`)
with the identity in DEV and the device's TPM (a sim device's own; else ``--tpm``), the
event log of its last boot (a sim device's ``eventlog.bin``, else ``--eventlog``, default
the kernel's ``binary_bios_measurements``) and the posture collected from ``--posture-root``
(default ``/``: the running system; device/posture.py) or given as ``--posture`` JSON.
Exit 0 when the verdict passed, 2 when it failed (the failures are printed). Every
request is signed in the TPM with the enrolled identity key, as the agent's are (RFC
9421, ADR 0032; :class:`~bastion.device.agent.signing.TpmRequestSigner`), so a server
that accepts only signed device requests attests the device too; no API key is opened.

``verdicts DEVICE_ID --fleet F [--limit N]`` shows a device's verdict history (each
line starts with the verdict's id). ``verdict-log DEVICE_ID VERDICT_ID --fleet F -o FILE``
writes the TCG event log the device sent with that verdict (the raw bytes, for
``tpm2_eventlog FILE``); only a device's newest verdict keeps its log.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.cli import _fleet_http as api
from bastion.cli._common import add_json_flag, add_tpm_flag, emit, fail_line
from bastion.errors import ConfigError
from bastion.formats import strict_json
from bastion.io.files import atomic_write, read_bounded

KERNEL_EVENTLOG = "/sys/kernel/security/tpm0/binary_bios_measurements"


def register(subparsers: Any) -> None:
    """Add attest and verdicts to the ``device`` group."""
    p = subparsers.add_parser("attest", help="attest this device to its fleet (TPM quote)")
    p.add_argument("dev", metavar="DEV", type=Path, help="device state folder (identity.json)")
    p.add_argument("--fleet", metavar="FLEET_ID", help="refuse unless the device is in this fleet")
    p.add_argument("--eventlog", type=Path, metavar="FILE", help="TCG event log of this boot")
    p.add_argument("--posture", type=Path, metavar="FILE", help="posture facts (JSON object)")
    p.add_argument(
        "--posture-root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="collect posture from the /proc and /sys under DIR (default /)",
    )
    api.add_server_flags(p)
    add_tpm_flag(p)
    add_json_flag(p)
    p.set_defaults(func=_attest)

    v = subparsers.add_parser("verdicts", help="a device's attestation verdicts (operator)")
    v.add_argument("device_id", metavar="DEVICE_ID")
    v.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    v.add_argument("--limit", type=int, default=20, metavar="N")
    api.add_server_flags(v)
    add_json_flag(v)
    v.set_defaults(func=_verdicts)

    e = subparsers.add_parser(
        "verdict-log", help="the TCG event log a device sent with a verdict (operator)"
    )
    e.add_argument("device_id", metavar="DEVICE_ID")
    e.add_argument("verdict_id", metavar="VERDICT_ID", type=int, help="from device verdicts")
    e.add_argument("--fleet", required=True, metavar="FLEET", help="fleet id, name, or ORG/NAME")
    e.add_argument(
        "-o", "--output", required=True, type=Path, metavar="FILE", help="where to write it"
    )
    api.add_server_flags(e)
    add_json_flag(e)
    e.set_defaults(func=_eventlog_of)


def _eventlog(dev: Path, path: Path | None) -> bytes:
    from bastion.device.platform.sim import DEVICE_FILE

    if path is None and (dev / DEVICE_FILE).exists():
        from bastion.device.attest import sim_eventlog

        return sim_eventlog(dev)
    return read_bounded(path or Path(KERNEL_EVENTLOG), limits.ATTEST_EVENTLOG_MAX_SIZE, "event log")


def _verdict_text(v: dict[str, Any]) -> str:
    if v["ok"]:
        return f"attestation passed (release {v.get('release')}, verdict {v['id']})"
    lines = [f"attestation FAILED (verdict {v['id']}):"]
    lines += [f"  {f['id']}: {f['detail']}" for f in v["failures"]]
    return "\n".join(lines)


def _attest(args: argparse.Namespace) -> int:
    from bastion.cli._device_fleet import _device_tpm
    from bastion.device.agent.signing import TpmRequestSigner
    from bastion.device.attest import attest
    from bastion.device.posture import FileTree, collect_posture, dmsetup_status
    from bastion.device.provision import DeviceIdentity
    from bastion.io.clock import SystemClock
    from bastion.io.http import HttpClient

    dev: Path = args.dev
    identity = DeviceIdentity.load(dev)
    if args.fleet and args.fleet != identity.fleet_id:
        raise ConfigError(f"device is in fleet {identity.fleet_id}, not {args.fleet}")
    if args.posture:
        raw = read_bounded(args.posture, limits.JSON_MAX_SIZE, "posture")
        posture = strict_json.loads_object(raw, what="posture")
    else:
        live = args.posture_root == Path("/")
        posture = collect_posture(FileTree(args.posture_root), dmsetup_status if live else None)
    log = _eventlog(dev, args.eventlog)
    url = args.server or identity.server_url or api.device_server_url(args)
    with _device_tpm(dev, args.tpm) as tpm:
        signer = TpmRequestSigner(tpm, identity, SystemClock())
        with HttpClient(url, ca_file=getattr(args, "ca_file", None), signer=signer) as http:
            verdict = attest(tpm, identity, http, log, posture)
    if not verdict["ok"] and not args.json:
        fail_line("the fleet server refused this device's attestation")
    emit(args, _verdict_text(verdict), verdict)
    return 0 if verdict["ok"] else 2


def _verdicts(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        rows = http.call(
            "GET",
            f"/v1/fleets/{fleet}/devices/{args.device_id}/attestations?limit={args.limit}",
        )
    lines = [
        f"{v['id']}  {v['at']}  {'PASS' if v['ok'] else 'FAIL'}  {v.get('release') or '-'}  "
        + ",".join(f["id"] for f in v["failures"])
        for v in rows
    ]
    emit(args, "\n".join(lines) or "no verdicts: the device never attested", rows)
    return 0


def _eventlog_of(args: argparse.Namespace) -> int:
    with api.operator(args) as http:
        fleet = api.fleet_id(http, args.fleet)
        answer = http.request(
            "GET",
            f"/v1/fleets/{fleet}/devices/{args.device_id}/attestations/{args.verdict_id}/eventlog",
        )
    atomic_write(args.output, answer.content)
    facts = {"verdict": args.verdict_id, "bytes": len(answer.content), "file": str(args.output)}
    emit(args, f"{len(answer.content)} bytes of event log written to {args.output}", facts)
    return 0
