"""``bastion agent run DEV``: the device agent (docs/agent.md).

``run DEV [--data DIR] [--server URL] [--ca-file PEM] [--tpm URI] [--once]
[--heartbeat SECONDS] [--slot A|B] [--update-interval SECONDS] [--update-hook EXE]
[--wipe-hook EXE] [--eventlog FILE] [--posture-root DIR]`` loads the identity in DEV
(``identity.json`` from ``device provision``), opens the device's TPM (a sim device's own, else
``--tpm``), signs every request with the TPM-held identity key and runs the loop of
:mod:`bastion.device.agent.agent`. ``DATA`` (default ``DEV/agent``; on a real device the
data volume, e.g. ``/var/lib/bastion/agent``) holds ``config.json``, ``env``, the log
buffer, the spool folder applications drop ``*.log`` files into, and ``done.json``.
``--once`` runs one cycle and the commands waiting, then exits (0), or fails with the
error's exit code instead of retrying. The systemd unit shipped for real devices is
``bastion/device/agent/bastion-agent.service``.

Updates (ADR 0038): a sim device configured with ``bastion update configure`` (TUF
settings in its store) gets the built-in updater: ``check-update`` and the periodic
check (``--update-interval``, unless the fleet config sets ``update_check_seconds``)
install the fleet's target once TUF agrees, the sim firmware reboots into the trial
slot, and the agent commits or falls back and sends the signed report. With
``--platform linux [--root PATH] [--disk DEV]`` (cli/_platform.py) a real device so
configured gets the same updater over the linux platform: its TPM (``--tpm``, else
``/dev/tpmrm0``), systemd-boot's booted entry, ``systemctl reboot``. Other devices run
``--update-hook`` on ``check-update``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from bastion.cli import _fleet_http as api
from bastion.cli._common import add_json_flag, add_tpm_flag, emit
from bastion.cli._platform import DevicePlatform, add_linux_flags, agent_platform


def register(subparsers: Any) -> None:
    """Add the ``agent`` group."""
    parser = subparsers.add_parser("agent", help="the device agent (outbound channel)")
    sub = parser.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda _a: (parser.print_help(), 2)[1])
    p = sub.add_parser("run", help="run the agent of the device in DEV")
    p.add_argument("dev", metavar="DEV", type=Path, help="device state folder (identity.json)")
    p.add_argument("--data", type=Path, metavar="DIR", help="agent data folder (default DEV/agent)")
    p.add_argument("--once", action="store_true", help="one cycle and waiting commands, then exit")
    p.add_argument("--heartbeat", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--slot", help="the A/B slot this system booted from (reported)")
    p.add_argument(
        "--update-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="periodic update check unless the fleet config sets one (default 6 h; 0: off)",
    )
    p.add_argument(
        "--update-hook", type=Path, metavar="EXE", help="run by check-update (no built-in updater)"
    )
    p.add_argument("--wipe-hook", type=Path, metavar="EXE", help="run by wipe (erase, reboot)")
    p.add_argument("--eventlog", type=Path, metavar="FILE", help="event log for attest commands")
    p.add_argument("--posture-root", type=Path, default=Path("/"), metavar="DIR")
    api.add_server_flags(p)
    add_tpm_flag(p)
    add_linux_flags(p)
    add_json_flag(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from bastion.cli._device_attest import _eventlog
    from bastion.cli._device_fleet import _device_tpm
    from bastion.device.agent.actions import SystemActions
    from bastion.device.agent.agent import Agent, AgentOptions
    from bastion.device.agent.rotate import pending_identity, recover_rotation, rotate_identity
    from bastion.device.agent.signing import TpmRequestSigner
    from bastion.device.agent.updater import DEFAULT_INTERVAL_SECONDS
    from bastion.device.attest import attest
    from bastion.device.posture import FileTree, collect_posture, dmsetup_status
    from bastion.device.provision import IDENTITY_FILE, DeviceIdentity
    from bastion.io import websocket
    from bastion.io.clock import SystemClock
    from bastion.io.http import HttpClient
    from bastion.io.runner import CommandRunner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    linux = agent_platform(args)
    dev: Path = args.dev
    identity = DeviceIdentity.load(dev)
    data = args.data or dev / "agent"
    url = args.server or identity.server_url or api.device_server_url(args)
    ca_file = getattr(args, "ca_file", None)
    clock = SystemClock()
    opened = linux.platform.power_on() if linux is not None else _device_tpm(dev, args.tpm)
    with opened as tpm:
        pending = pending_identity(dev)
        if pending is not None:  # a rotation was interrupted: finish or drop it
            probe_signer = TpmRequestSigner(tpm, pending, clock)
            with HttpClient(url, ca_file=ca_file, signer=probe_signer) as probe:
                identity = recover_rotation(tpm, identity, dev, probe)
        signer = TpmRequestSigner(tpm, identity, clock)
        with HttpClient(url, ca_file=ca_file, signer=signer) as http:

            def open_channel(headers: Any) -> websocket.Channel:
                return websocket.connect(url, "/v1/device/channel", headers, ca_file=ca_file)

            def attest_now() -> Any:
                live = args.posture_root == Path("/")
                posture = collect_posture(
                    FileTree(args.posture_root), dmsetup_status if live else None
                )
                return attest(tpm, identity, http, _eventlog(dev, args.eventlog), posture)

            def forget_identity() -> None:
                (dev / IDENTITY_FILE).unlink(missing_ok=True)

            def rotate_now() -> str:
                signer.identity = rotate_identity(tpm, signer.identity, http, dev)
                return "identity key rotated in the TPM; new certificate saved"

            actions: Any = SystemActions(
                CommandRunner(), update_hook=args.update_hook, wipe_hook=args.wipe_hook
            )
            agent = Agent(
                http,
                data,
                actions,
                open_channel,
                clock,
                options=AgentOptions(
                    heartbeat_seconds=args.heartbeat,
                    slot=args.slot,
                    update_check_seconds=DEFAULT_INTERVAL_SECONDS
                    if args.update_interval is None
                    else args.update_interval,
                ),
                attest=attest_now,
                on_wipe=forget_identity,
                rotate=rotate_now,
            )
            if linux is not None:
                agent.updater = _linux_updater(
                    linux, tpm, signer=signer, http=http, ca_file=ca_file, agent=agent
                )
            else:
                agent.updater = _sim_updater(
                    dev, tpm, signer=signer, http=http, ca_file=ca_file, agent=agent
                )
                if agent.updater is not None:
                    agent.actions = _SimActions(actions, agent.updater.reboot)
            handled = agent.run(once=args.once)
    emit(
        args,
        f"agent of device {identity.device_id}: {handled} command(s) handled",
        {"device_id": identity.device_id, "commands": handled},
    )
    return 0


class _SimActions:
    """A sim device's actions: ``reboot`` is the sim firmware's (the update tests' and
    ``bastion update reboot``'s model); the rest are the system's."""

    def __init__(self, inner: Any, reboot: Any) -> None:
        self._inner = inner
        self.reboot = reboot

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _linux_updater(
    linux: DevicePlatform, tpm: Any, *, signer: Any, http: Any, ca_file: str | None, agent: Any
) -> Any:
    """The built-in updater of a linux device with TUF settings, else None (the hook).
    Its booted slot is systemd-boot's (refused without it); its reboot is the system's."""
    from bastion.device.agent.updater import Updater
    from bastion.device.update import tuf_update

    if linux.platform.load(tuf_update.SETTINGS) is None:
        return None
    linux.sync_booted()
    return Updater(
        linux.platform,
        linux.metadata_dir,
        http,
        tpm=tpm,
        identity_key=lambda: signer.identity.key,
        ak=lambda: signer.identity.ak,
        device_id=signer.identity.device_id,
        reboot=agent.actions.reboot,
        ca_file=ca_file,
        note=agent.note,
    )


def _sim_updater(
    dev: Path, tpm: Any, *, signer: Any, http: Any, ca_file: str | None, agent: Any
) -> Any:
    """The built-in updater of a sim device with TUF settings (ADR 0038), else None."""
    from bastion.device.agent.updater import Updater
    from bastion.device.platform.sim import DEVICE_FILE, SimPlatform
    from bastion.device.update import slots, tuf_update

    if not (dev / DEVICE_FILE).exists():
        return None
    plat = SimPlatform(dev)
    if plat.load(tuf_update.SETTINGS) is None:
        return None

    def reboot() -> None:
        boot = slots.firmware_boot(plat)
        agent.note(f"sim reboot: booted slot {boot.slot} ({boot.stem})")

    return Updater(
        plat,
        dev / tuf_update.METADATA_DIR,
        http,
        tpm=tpm,
        identity_key=lambda: signer.identity.key,
        ak=lambda: signer.identity.ak,
        device_id=signer.identity.device_id,
        reboot=reboot,
        ca_file=ca_file,
        note=agent.note,
    )
