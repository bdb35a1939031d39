"""``bastion update``: configure, check, install, settle and show A/B updates on a device.

``DEV`` is a device folder (the ``sim`` platform); ``--platform linux [--root PATH]
[--disk DEV] [--tpm URI]`` instead works on the running device (cli/_platform.py): the
same state from ``/var/lib/bastion``, its ESP, disk and ``/dev/tpmrm0``.
Releases come from the device's TUF repository (device/update/tuf_update.py, ADR 0030
"TUF-picked installs"); a bundle path or ``https://`` URL (``http://`` on loopback) may
be given instead, for manual, RAUC-style installs. Bundles are read with HTTP Range
requests; ``--keyring`` is the release CA (PEM), by default the one ``configure``
recorded.

* ``configure DEV --product P --hardware H [--channel C] [--health FILE]
  [--metadata-url URL --targets-url URL --tuf-root root.json] [--keyring PEM]``
* ``check DEV [BUNDLE]``: without BUNDLE, refresh TUF and show the release an install
  would take, or why none; with BUNDLE, verify it and run the preflight (nothing written);
* ``install DEV [BUNDLE]``: stream the TUF-picked release (checked against the signed
  target's length and SHA-256 and against its own signature and verity tree), or the
  given bundle, into the inactive slot (resumes a cut install); its boot entry in trial;
* ``settle DEV``: after a boot: health checks, then commit or fall back (and report);
* ``reboot DEV``: the sim firmware's choice of slot (systemd-boot order, boot
  counting, SVN check), as a real device's firmware makes it at power-on; refused on
  ``linux``, where ``systemctl reboot`` and systemd-boot do it;
* ``status DEV``: slots, versions, SVNs, states, last result.

A device created with ``"fuses": "tpm"``, and every ``linux`` device, keeps its fuses in
TPM NV bits indexes: every command that reads or blows them (check, install, settle,
reboot, status) opens the device's TPM for its length (DevicePlatform.fuse_tpm) and
refuses when it cannot, never reading "no TPM" as "no fuses".
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bastion.cli._common import add_json_flag, emit
from bastion.cli._platform import DevicePlatform, add_platform_flags, device_platform, sim_only
from bastion.device.platform.base import Platform
from bastion.device.update import commit, health, install, preflight, slots, stream, tuf_update
from bastion.device.update.delta import BLOCK
from bastion.errors import ConfigError
from bastion.formats import strict_json
from bastion.io.files import read_bounded
from bastion.limits import CERT_CHAIN_MAX_DEPTH, CERT_MAX_SIZE, JSON_MAX_SIZE, TUF_ROOT_MAX_SIZE
from bastion.tpm.base import Tpm
from bastion.trust.bundle import load_keyring


def _device(args: argparse.Namespace, *, booted: bool = True) -> DevicePlatform:
    """The platform; ``booted``: the booted slot is read (synced from systemd-boot on linux)."""
    if args.platform == "linux" and getattr(args, "bundle", "") is None:
        # linux takes no DEV: a lone positional of check/install is the BUNDLE
        args.bundle, args.device = args.device, None
    dev = device_platform(args)
    if booted:
        dev.sync_booted()
    return dev


_KEYRING_LIMIT = CERT_MAX_SIZE * CERT_CHAIN_MAX_DEPTH


def _keyring(args: argparse.Namespace, plat: Platform) -> list[Any]:
    if args.keyring:
        return load_keyring(read_bounded(args.keyring, _KEYRING_LIMIT, "keyring"))
    stored = plat.load(tuf_update.KEYRING)
    if stored is None:
        raise ConfigError(
            "no release keyring: give --keyring PEM, or record one with "
            "bastion update configure DEV ... --keyring PEM"
        )
    return load_keyring(stored)


def _configure(args: argparse.Namespace) -> int:
    dev = _device(args, booted=False)
    plat = dev.platform
    spec: dict[str, Any] = {}
    if args.health:
        spec = strict_json.loads_object(
            read_bounded(args.health, JSON_MAX_SIZE, "health specification"),
            what=args.health,
        )
        health.parse_spec(spec)
    tuf_args = (args.metadata_url, args.targets_url, args.tuf_root)
    settings = None
    if any(tuf_args):
        if not all(tuf_args):
            names = ("--metadata-url", "--targets-url", "--tuf-root")
            given = [n for n, v in zip(names, tuf_args, strict=True) if v]
            raise ConfigError(f"TUF needs all of {', '.join(names)}; only {', '.join(given)} given")
        settings = tuf_update.TufSettings(args.metadata_url, args.targets_url)
        root = read_bounded(args.tuf_root, TUF_ROOT_MAX_SIZE, "trusted TUF root")
    keyring = None
    if args.keyring:
        keyring = read_bounded(args.keyring, _KEYRING_LIMIT, "keyring")
        load_keyring(keyring)  # refuse a file that holds no certificate now
    config = preflight.DeviceConfig(args.product, args.hardware, args.channel, spec)
    preflight.save_config(plat, config)
    if settings is not None:
        tuf_update.save_settings(plat, dev.metadata_dir, settings, root)
    if keyring is not None:
        plat.store(tuf_update.KEYRING, keyring)
    emit(
        args,
        f"device {dev.label}: {args.product} on {args.hardware} ({args.channel})",
        {
            "product": args.product,
            "hardware": args.hardware,
            "channel": args.channel,
            "health": spec,
            "tuf": None
            if settings is None
            else {"metadata_url": settings.metadata_url, "targets_url": settings.targets_url},
            "keyring": keyring is not None,
        },
    )
    return 0


def _check_text(result: tuf_update.UpdateCheck) -> str:
    t = result.target
    head = (
        f"running {result.running_version} (svn {result.running_svn}, fuses "
        f"{result.fuse_counter}); {result.product} on {result.hardware} ({result.channel})"
    )
    if t is not None and result.status == "awaiting-reboot":
        return f"{head}\n{t.path} ({t.version}) is installed in the other slot: reboot to try it"
    if t is not None:
        return (
            f"{head}\nwould install {t.path}: {t.version} (svn {t.svn}), {t.length} bytes, "
            f"sha256 {t.sha256}"
        )
    why = {
        "up-to-date": "up to date",
        "no-release": "no release for this product and channel",
        "not-suitable": "no release this device may install",
    }[result.status]
    lines = [f"{head}\nnothing to install: {why}"]
    lines += [f"  {path}: {reason}" for path, reason in result.refused]
    return "\n".join(lines)


def _tuf_check(
    dev: DevicePlatform, args: argparse.Namespace, tpm: Tpm | None
) -> tuple[tuf_update.UpdateCheck, Any]:
    plat = dev.platform
    client = tuf_update.open_client(plat, dev.metadata_dir, ca_file=args.ca_file)
    try:
        return tuf_update.check(plat, client, tpm), client
    except BaseException:
        client.close()
        raise


def _check(args: argparse.Namespace) -> int:
    dev = _device(args)
    with dev.fuse_tpm() as tpm:
        return _check_with(args, dev, tpm)


def _check_with(args: argparse.Namespace, dev: DevicePlatform, tpm: Tpm | None) -> int:
    plat = dev.platform
    if args.bundle is None:
        result, client = _tuf_check(dev, args, tpm)
        client.close()
        emit(args, _check_text(result), result.to_json())
        return 0
    source = stream.open_source(args.bundle, ca_file=args.ca_file)
    try:
        opened = stream.open_bundle(source, _keyring(args, plat))
        rel = opened.release
        boot = slots.booted(plat)
        records = slots.load_records(plat)
        running = records.get(boot.slot) if boot else None
        target = slots.other(boot.slot) if boot else "?"
        sizes = {}
        if boot is not None:
            for cls, part in (
                ("rootfs", slots.root_partition(target)),
                ("verity", slots.verity_partition(target)),
            ):
                st = plat.partition_storage(part)
                sizes[cls] = st.size
                st.close()
        pre = preflight.check(
            rel,
            config=preflight.load_config(plat),
            running=running,
            fuse_counter=plat.fuses(tpm).counter(),
            partition_sizes=sizes,
            bundle_size=source.size(),
            esp=preflight.esp_room(plat, target),
        )
        doc = {
            "bundle": source.name,
            "product": rel.product,
            "version": rel.version,
            "svn": rel.svn,
            "hardware": list(rel.hardware),
            "signer": opened.signer.subject.rfc4514_string(),
            "target_slot": target,
            "rootfs_blocks": rel.images["rootfs"].size // BLOCK,
            "bytes_read": source.bytes_read,
            "notes": list(pre.notes),
        }
    finally:
        source.close()
    text = (
        f"{rel.product} {rel.version} (svn {rel.svn}) signed by {doc['signer']}: "
        f"installable into slot {target}"
    )
    emit(args, "\n".join([text, *pre.notes]), doc)
    return 0


def _install(args: argparse.Namespace) -> int:
    dev = _device(args)
    with dev.fuse_tpm() as tpm:
        return _install_with(args, dev, tpm)


def _install_with(args: argparse.Namespace, dev: DevicePlatform, tpm: Tpm | None) -> int:
    plat = dev.platform
    keyring = _keyring(args, plat)
    target = None
    if args.bundle is None:
        checked, client = _tuf_check(dev, args, tpm)
        try:
            target = checked.target
            if target is None or checked.status == "awaiting-reboot":
                emit(args, _check_text(checked), {"installed": None, "check": checked.to_json()})
                return 0
            location = client.target_url(target)
        finally:
            client.close()
    else:
        location = args.bundle
    source = stream.open_source(location, ca_file=args.ca_file)
    show = not args.json and sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show:
            print(f"\rslot blocks {done}/{total}", end="", file=sys.stderr, flush=True)

    try:
        result = install.install(
            plat,
            source,
            keyring,
            target=target,
            progress=progress,
            delta=not args.no_delta,
            tpm=tpm,
        )
    finally:
        source.close()
        if show:
            print(file=sys.stderr)
    text = (
        f"installed {result.version} (svn {result.svn}) into slot {result.slot} as "
        f"{result.entry}: {result.bytes_downloaded} of {result.bundle_size} bundle bytes read "
        f"({result.blocks_in_place} blocks in place, {result.blocks_copied} copied, "
        f"{result.blocks_downloaded} downloaded); the next boot tries it"
    )
    if target is not None:
        text += f"\nTUF target {target.path}: length and sha256 {target.sha256} match"
    doc = result.to_json()
    doc["tuf_target"] = None if target is None else target.path
    emit(args, "\n".join([text, *result.notes]), doc)
    return 0


def _settle(args: argparse.Namespace) -> int:
    dev = _device(args)
    with dev.fuse_tpm() as tpm:
        result = commit.settle(dev.platform, tpm=tpm)
    doc = {
        "action": result.action,
        "slot": result.slot,
        "reason": result.reason,
        "warnings": list(result.health.warnings) if result.health else [],
    }
    emit(args, f"slot {result.slot}: {result.action} {result.reason}".rstrip(), doc)
    return 0


#: what a real device does instead of ``update reboot`` (docs/updates.md)
REBOOT_INSTEAD = (
    "run `systemctl reboot`: systemd-boot tries the trial entry and counts its tries, "
    "then `bastion update settle --platform linux` commits it or falls back"
)


def _reboot(args: argparse.Namespace) -> int:
    dev = _device(args, booted=False)
    plat = sim_only(dev, "update reboot (the firmware's slot choice at power-on)", REBOOT_INSTEAD)
    with dev.fuse_tpm() as tpm:
        boot = slots.firmware_boot(plat, tpm)
    doc = {"slot": boot.slot, "entry": boot.stem, "trial": boot.trial}
    emit(args, f"booted slot {boot.slot} ({boot.stem}{', trial' if boot.trial else ''})", doc)
    return 0


def _status(args: argparse.Namespace) -> int:
    dev = _device(args)
    with dev.fuse_tpm() as tpm:
        doc = commit.status(dev.platform, tpm)
    emit(args, commit.status_text(doc), doc)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``update configure|check|install|settle|reboot|status``."""
    top = subparsers.add_parser("update", help="A/B updates on a device")
    sub = top.add_subparsers(dest="update_command", metavar="SUBCOMMAND")
    top.set_defaults(func=lambda _args: _usage(top))

    def device_cmd(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        add_platform_flags(p)
        add_json_flag(p)
        p.set_defaults(func=func)
        return p

    c = device_cmd("configure", "set the device's product, hardware, channel, checks", _configure)
    c.add_argument("--product", required=True, help="RAUC compatible of this device")
    c.add_argument("--hardware", required=True, help="hardware id releases must name")
    c.add_argument("--channel", default="stable")
    c.add_argument("--health", metavar="JSON", help="device health specification file")
    c.add_argument("--metadata-url", metavar="URL", help="TUF metadata base URL")
    c.add_argument("--targets-url", metavar="URL", help="TUF targets (bundles) base URL")
    c.add_argument("--tuf-root", metavar="JSON", help="trusted TUF root (copied to the device)")
    c.add_argument("--keyring", metavar="PEM", help="release CA(s) (copied to the device)")
    for name, help_text, func in (
        ("check", "TUF: what an install would take, or why nothing (writes nothing)", _check),
        ("install", "stream the TUF release (or BUNDLE) into the inactive slot", _install),
    ):
        p = device_cmd(name, help_text, func)
        p.add_argument(
            "bundle", metavar="BUNDLE", nargs="?", help="path or https:// URL instead of TUF"
        )
        p.add_argument("--keyring", metavar="PEM", help="release CA(s) (default: configured)")
        p.add_argument(
            "--ca-file", metavar="PEM", help="TLS CA of an https:// bundle or TUF repository"
        )
        if name == "install":
            p.add_argument(
                "--no-delta",
                action="store_true",
                help="download every block (read no local block but the target's on resume)",
            )
    device_cmd("settle", "after a boot: health checks, then commit or fall back", _settle)
    device_cmd("reboot", "sim: the firmware's slot choice at power-on", _reboot)
    device_cmd("status", "slots, versions, SVNs, trial/committed/fell back", _status)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
