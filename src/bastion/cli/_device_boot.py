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
from bastion.cli.image import image_esp, load_image_trust, secure_boot_variables
from bastion.device.boot import read_eventlog
from bastion.device.boot.efi_chain import (
    REPORT_FILE,
    USERSPACE_LOG_FILE,
    EfiBootChain,
    EfiBootReport,
    EfiStage,
)
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.device.profile import make_profile
from bastion.errors import BastionError, ConfigError, NotFoundError
from bastion.formats import eventlog as el
from bastion.formats import strict_json
from bastion.trust.keyset import KeySet


def _create_efi(args: argparse.Namespace) -> int:
    variables = secure_boot_variables(args.keys)
    keys = KeySet.load(args.keys, passphrase_source(args, args.keys))
    profile = make_profile(args.tamper_response, tuple(args.audit or ()))
    delegation = keys.statement("profile-delegation")
    try:  # the product kernel is built to trust the key set's module key
        kernel_keys = [keys.certificate("module")]
    except NotFoundError:
        kernel_keys = []
    create_efi_device(
        Path(args.device),
        Path(args.image),
        variables,
        tpm=args.tpm or "software",
        fuses=args.fuses,
        trust=load_image_trust(args.keys),
        profile_signer=keys.signer("boot" if delegation else "platform-root"),
        profile=profile,
        profile_delegation=delegation,
        kernel_keys=kernel_keys,
    )
    summary = {
        "device": args.device,
        "image": args.image,
        "tpm": args.tpm or "software",
        "fuses": args.fuses,
        "secure_boot": sorted(variables),
        "profile": profile.to_json(),
    }
    emit(
        args,
        f"device {args.device} created from {args.image} (image signature verified)\n"
        f"  firmware: Secure Boot on, {', '.join(sorted(variables))} enrolled from the key set\n"
        f"  tpm: {summary['tpm']}; tamper response: {profile.tamper_response}",
        summary,
    )
    return 0


def _create(args: argparse.Namespace) -> int:
    if image_esp(Path(args.image)) is None:
        raise ConfigError(
            f"{args.image}: no EFI System Partition (build the image with `bastion image build`)"
        )
    return _create_efi(args)


def _warn(report: EfiBootReport | None) -> None:
    """Each boot warning (a repaired header, an audited failure, a wipe) on stderr."""
    for warning in report.warnings if report is not None else ():
        fail_line(f"warning: {warning}")


def _boot_efi(args: argparse.Namespace) -> int:
    try:
        report = EfiBootChain(SimPlatform(Path(args.device)), full_verify=args.full_verify).run()
    except BastionError as exc:
        _warn(getattr(exc, "boot_report", None))
        if args.device not in str(exc):
            exc.args = (f"{exc} (device {args.device})",)
        raise
    _warn(report)
    stages = " -> ".join(s.value for s in EfiStage)
    lines = [
        f"booted {args.device}: entry {report.entry} (as {report.booted_as}), version "
        f"{report.version}, security version {report.security_version} -> {report.reached}",
        f"  {stages}; Secure Boot {'on' if report.secure_boot else 'OFF'}",
    ]
    lines += [f"  note: {n}" for n in report.notes]
    if report.recovery_key:
        lines.append(f"  RECOVERY KEY (shown once, keep it offline): {report.recovery_key}")
    emit(args, "\n".join(lines), report.to_json(secrets=True))
    return 0


def _boot(args: argparse.Namespace) -> int:
    _ = SimPlatform(Path(args.device)).config  # NotFoundError naming a folder that is no device
    return _boot_efi(args)


def _inspect_efi(args: argparse.Namespace, plat: SimPlatform) -> int:
    fuses = plat.fuses(None) if plat.config.get("fuses") != "tpm" else None
    counter = fuses.counter() if fuses is not None else None
    last = plat.load(REPORT_FILE)
    doc: dict[str, Any] = {
        "device": args.device,
        "config": plat.config,
        "state": plat.state(),
        "fuses": {"counter": counter},
        "esp": {"entries": plat.esp().list("EFI/Linux")},
        "last_boot": strict_json.loads(last, what="boot.json") if last else None,
    }
    text = [f"device {args.device} ({doc['config'].get('tpm', '-')} TPM)"]
    text.append(f"  fuses: counter {counter if counter is not None else '(in the TPM)'}")
    text += [f"  entry: EFI/Linux/{n}" for n in doc["esp"]["entries"]]
    lb = doc["last_boot"]
    text.append(
        f"  last boot: {lb.get('entry') or '-'} reached {lb.get('reached') or '-'}"
        + (f", failed: {lb['error']}" if lb.get("error") else "")
        if lb
        else "  last boot: none yet"
    )
    emit(args, "\n".join(text), doc)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    plat = SimPlatform(Path(args.device))
    _ = plat.config  # NotFoundError naming a folder that is no device
    return _inspect_efi(args, plat)


def _eventlog(args: argparse.Namespace) -> int:
    log = read_eventlog(Path(args.device))
    userspace = SimPlatform(Path(args.device)).load(USERSPACE_LOG_FILE)
    if userspace:  # systemd-pcrphase's words after the kernel started (EFI chain)
        log = el.EventLog(log.spec, log.events + el.parse(userspace).events)
    pcrs = el.replay(log.events)
    events: list[dict[str, Any]] = [
        {
            "pcr": e.pcr,
            "type": el.EventType(e.event_type).name
            if e.event_type in el.EventType._value2member_map_
            else hex(e.event_type),
            "sha256": e.digest(el.ALG_SHA256).hex(),
            "data": _event_text(e.data),
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


def _event_text(data: bytes) -> str:
    """An event's data as text when it is printable ASCII (a NUL-terminated string, as
    systemd-stub's section names), else hex (firmware's binary UEFI structures)."""
    text = data.rstrip(b"\0")
    if text.isascii() and all(32 <= b < 127 for b in text):
        return text.decode("ascii")
    return "hex:" + data.hex()


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
