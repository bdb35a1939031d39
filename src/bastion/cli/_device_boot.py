"""``bastion device create|boot|inspect|eventlog``: sim devices and their boot chain."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bastion.cli._common import (
    add_json_flag,
    add_passphrase_flag,
    emit,
    fail_line,
    passphrase_source,
)
from bastion.cli.image import load_image_trust
from bastion.device import boot as chain
from bastion.device.boot_create import create_device
from bastion.device.platform.sim import SimPlatform
from bastion.device.profile import make_profile
from bastion.errors import BastionError
from bastion.formats import eventlog as el
from bastion.formats import strict_json
from bastion.formats.bootctl import parse_partition
from bastion.formats.image import PART_BOOTCTL
from bastion.trust.keyset import KeySet


def _create(args: argparse.Namespace) -> int:
    keys = KeySet.load(args.keys, passphrase_source(args, args.keys))
    profile = make_profile(args.tamper_response, tuple(args.audit or ()))
    # the platform root delegated profile signing to the boot key at `keys init`; only
    # a key set made before delegations existed still needs the (offline) root key
    delegation = keys.statement("profile-delegation")
    summary = create_device(
        Path(args.device),
        Path(args.image),
        load_image_trust(args.keys),
        keys.signer("boot" if delegation else "platform-root"),
        tpm=args.tpm or "software",
        fuses=args.fuses,
        profile=profile,
        profile_delegation=delegation,
    )
    emit(
        args,
        f"device {args.device} created from {args.image} (image signature verified)\n"
        f"  fuses: platform key hash {summary['platform_key_hash']} burned\n"
        f"  tpm: {summary['tpm']}; tamper response: {profile.tamper_response}",
        summary,
    )
    return 0


def _warn(report: chain.BootReport | None) -> None:
    """Each boot warning (a repaired header, an audited failure, a wipe) on stderr."""
    for warning in report.warnings if report is not None else ():
        fail_line(f"warning: {warning}")


def _boot(args: argparse.Namespace) -> int:
    try:
        report = chain.boot(Path(args.device), full_verify=args.full_verify)
    except BastionError as exc:
        _warn(getattr(exc, "boot_report", None))  # then main prints the cause, one line
        if args.device not in str(exc):
            exc.args = (f"{exc} (device {args.device})",)
        raise
    _warn(report)
    lines = [
        f"booted {args.device}: slot {report.slot}, version {report.version}, "
        f"security version {report.security_version} -> {report.reached}"
    ]
    lines += [f"  note: {n}" for n in report.notes]
    lines += [f"  warning: {w}" for w in report.warnings]
    if report.first_boot:
        lines.append("  first boot: data volume created and sealed to the TPM")
    if report.recovery_key:
        lines.append(f"  RECOVERY KEY (shown once, keep it offline): {report.recovery_key}")
    emit(args, "\n".join(lines), report.to_json(secrets=True))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    plat = SimPlatform(Path(args.device))
    ctl = parse_partition(plat.read_partition(PART_BOOTCTL))
    if plat.config.get("fuses") == "tpm":
        with plat.attached_tpm() as tpm:
            fuses = plat.fuses(tpm)
            key_hash, counter = fuses.key_hash(), fuses.counter()
    else:
        fuses = plat.fuses(None)
        key_hash, counter = fuses.key_hash(), fuses.counter()
    last = plat.load(chain.REPORT_FILE)
    doc: dict[str, Any] = {
        "device": args.device,
        "config": plat.config,
        "state": plat.state(),
        "fuses": {
            "key_hash": (key_hash or b"").hex() or None,
            "counter": counter,
        },
        "boot_control": {
            "active": "ab"[ctl.control.active],
            "sequence": ctl.control.sequence,
            "slots": {
                name: {
                    "priority": s.priority,
                    "tries_left": s.tries_left,
                    "successful": s.successful,
                    "unbootable": s.unbootable,
                }
                for name, s in zip("ab", ctl.control.slots, strict=True)
            },
            "errors": list(ctl.errors),
        },
        "last_boot": strict_json.loads(last, what="boot.json") if last else None,
    }
    text = [
        f"device {args.device} ({doc['config'].get('tpm', '-')} TPM)",
        f"  fuses: key hash {doc['fuses']['key_hash'] or '-'}, counter {doc['fuses']['counter']}",
        f"  boot control: active {doc['boot_control']['active']}",
    ]
    for name, s in doc["boot_control"]["slots"].items():
        flags = [w for w in ("successful", "unbootable") if s[w]]
        text.append(
            f"    slot {name}: priority {s['priority']}, {s['tries_left']} tries left"
            + "".join(f", {w}" for w in flags)
        )
    if doc["last_boot"]:
        lb = doc["last_boot"]
        text.append(
            f"  last boot: slot {lb.get('slot') or '-'} reached {lb.get('reached') or '-'}"
            + (f", failed: {lb['error']}" if lb.get("error") else "")
        )
    else:
        text.append("  last boot: none yet")
    emit(args, "\n".join(text), doc)
    return 0


def _eventlog(args: argparse.Namespace) -> int:
    log = chain.read_eventlog(Path(args.device))
    pcrs = el.replay(log.events)
    events: list[dict[str, Any]] = [
        {
            "pcr": e.pcr,
            "type": el.EventType(e.event_type).name
            if e.event_type in el.EventType._value2member_map_
            else hex(e.event_type),
            "sha256": e.digest(el.ALG_SHA256).hex(),
            "data": e.data.rstrip(b"\0").decode("ascii", "replace"),
        }
        for e in log.events
    ]
    data: dict[str, Any] = {
        "events": events,
        "replay": {str(k): v.hex() for k, v in sorted(pcrs.items())},
    }
    if args.check:
        data["tpm_matches"] = _check_tpm(Path(args.device), pcrs)
    lines = [
        f"{ev['pcr']:>2} {ev['type']:<18} {ev['sha256'][:16]}... {ev['data']}" for ev in events
    ]
    lines += [f"replay sha256:{k:<2} {v}" for k, v in data["replay"].items()]
    if args.check:
        same = "yes" if data["tpm_matches"] else "NO: the event log does not explain the PCRs"
        lines.append(f"TPM PCRs equal the replay: {same}")
    emit(args, "\n".join(lines), data)
    return 0 if not args.check or data["tpm_matches"] else 2


def _check_tpm(folder: Path, pcrs: dict[int, bytes]) -> bool:
    from bastion.tpm.base import HashAlg, PcrSelection

    with SimPlatform(folder).attached_tpm() as tpm:  # software or swtpm, as booted
        actual = tpm.pcr_read(PcrSelection(HashAlg.SHA256, tuple(sorted(pcrs))))
    return all(actual[i] == v for i, v in pcrs.items())


def register(subparsers: Any) -> None:
    """Add create/boot/inspect/eventlog to the ``device`` group."""
    c = subparsers.add_parser("create", help="create a sim device from a signed image")
    c.add_argument("device", metavar="DEV")
    c.add_argument("--image", required=True)
    c.add_argument("--keys", required=True, metavar="DIR")
    c.add_argument("--tpm", metavar="KIND", help="software (default), swtpm, or a TPM URI")
    c.add_argument(
        "--fuses",
        default="file",
        choices=("file", "tpm"),
        help="fuse bank: a file (default) or TPM NV bits indexes (counter in the TPM)",
    )
    c.add_argument(
        "--tamper-response", default="halt", help="halt (default), try-other-slot, wipe-data"
    )
    c.add_argument(
        "--audit",
        action="append",
        metavar="FEATURE",
        help="log-and-continue for a feature (repeatable): loader-signature, unit-signature, "
        "rollback, module-signatures, verity-signature, verity",
    )
    add_passphrase_flag(c)
    add_json_flag(c)
    c.set_defaults(func=_create)

    b = subparsers.add_parser("boot", help="run the verified and measured boot chain")
    b.add_argument("device", metavar="DEV")
    b.add_argument("--full-verify", action="store_true", help="hash every root block at boot")
    add_json_flag(b)
    b.set_defaults(func=_boot)

    i = subparsers.add_parser("inspect", help="fuses, boot control and the last boot")
    i.add_argument("device", metavar="DEV")
    add_json_flag(i)
    i.set_defaults(func=_inspect)

    e = subparsers.add_parser("eventlog", help="the TCG event log of the last boot, replayed")
    e.add_argument("device", metavar="DEV")
    e.add_argument("--check", action="store_true", help="compare the replay with the TPM")
    add_json_flag(e)
    e.set_defaults(func=_eventlog)
