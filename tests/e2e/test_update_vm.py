"""Issue 12 end to end in QEMU: update A -> B, trial boot, health commit, fuses, A refused;
a failing health check falls back to A and the server shows "fell back" with the reason.

One device (docs/updates.md, "Proved in QEMU"; helpers in tests/e2e/updatevm.py): ``image
build``'s A/B disk with slot a = version 1 (SVN 1), provisioned by the sim's first boot
(data volume sealed to the signed PCR 11 policy, fuses in the swtpm's NV raised to 1),
enrolled with a real bastion server on loopback. What ran where:

* in the guest (QEMU, OVMF Secure Boot, the device's swtpm state, its disk writable):
  firmware signature checks, systemd-boot's entry choice and boot-counter rename on the
  ESP, systemd-stub, the kernel's dm-verity over the slot's root, the LUKS2 unlock by the
  signed policy, the anti-rollback check of the booted UKI's SVN against the TPM NV fuses,
  and the root's health checks (build/vm-init.sh);
* on the host, on the same disk file and swtpm state, between boots: bastion's install
  (device/update/install.py: verified bundle into slot b, PARTUUIDs, counted entry),
  settle (device/update/commit.py: bless, then fuses; or mark bad; or record the
  fallback) and the signed report over HTTP.

QEMU boots (each under the machine-wide lock): A; B in trial; then on two copies of the
device: A after the commit (refused), and A after B failed (the fallback). Four in all.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.bundlekit import release_keys
from tests.e2e import updatevm as uv
from tests.e2e.conftest import BootVm, Parts, make_root
from tests.integration.server.devicekit import FleetWorld, serve_on_loopback, shared_world

from bastion.build import ovmf
from bastion.cli.main import main
from bastion.device.boot.efi_chain import EfiBootChain, EfiStage
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.device.provision import DeviceIdentity, provision
from bastion.device.update import commit, install, slots
from bastion.device.update.commit import UpdateEvent
from bastion.device.update.preflight import DeviceConfig, save_config
from bastion.device.update.report import ReportFields, report_update
from bastion.device.update.stream import FileSource
from bastion.errors import RollbackError
from bastion.formats import bls, gpt
from bastion.formats.bootlog import Outcome
from bastion.formats.image import root_part, verity_part
from bastion.formats.update_report import UpdateResult
from bastion.io.http import HttpClient
from bastion.io.qemu import BootResult, setup_tpm_state

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RELEASE_HEALTH = {"required": [{"command": [uv.BOOT_OK]}]}
DEVICE_HEALTH = {"required": [{"command": [uv.APP_SELFTEST]}]}  # the failing world's own


@dataclass(frozen=True)
class Server:
    world: FleetWorld
    url: str
    env: dict[str, str]


@dataclass(frozen=True)
class World:
    """The device after A booted in QEMU, B was installed and B booted in trial."""

    dev: Path
    folder: Path
    release: uv.Release
    identity: DeviceIdentity
    boot_a: BootResult
    boot_b: BootResult
    installed: install.InstallResult


def cli(env: dict[str, str], *args: str) -> dict[str, object] | str:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    assert code == 0, (args, err.getvalue())
    text = out.getvalue()
    return json.loads(text) if "--json" in args else text  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("server")
    with (
        shared_world("sqlite", folder) as world,
        serve_on_loopback(world.client.app) as url,
    ):
        env = {
            "BASTION_CONFIG": str(folder / "operator.json"),
            "BASTION_TOKEN": world.headers["admin"]["Authorization"].split()[1],
        }
        yield Server(world, url, env)


def _serial(result: BootResult) -> str:
    return result.serial_log.read_text("utf-8", "replace")


@pytest.fixture(scope="module")
def world(
    vm_parts: Parts,
    sb_vars: bytes,
    boot_vm: BootVm,
    server: Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    folder = tmp_path_factory.mktemp("update-vm")
    v1 = uv.build_image(vm_parts, folder / "v1", make_root(folder / "root1"), "1", 1)
    v2 = uv.build_image(vm_parts, folder / "v2", uv.root_with_health(folder / "root2"), "2", 2)
    keys = release_keys("vm")
    release = uv.release_from_image(v2, folder / "release", keys, RELEASE_HEALTH)
    (folder / "ring.pem").write_bytes(keys.ca.public_bytes(serialization.Encoding.PEM))

    # the device: the factory image, the firmware's enrolled keys, a manufactured swtpm
    (folder / "vars.fd").write_bytes(sb_vars)
    store = ovmf.read_secureboot_store(folder / "vars.fd")
    variables = {"PK": store.pk, "KEK": store.kek, "db": store.db, "dbx": store.dbx}
    dev = folder / "dev"
    create_efi_device(dev, v1.path, variables, tpm="swtpm", fuses="tpm")
    setup_tpm_state(dev / "swtpm")
    first = EfiBootChain(SimPlatform(dev)).run()  # provisioning: the data volume is made
    assert first.reached is EfiStage.RUNNING and first.first_boot, first.to_json()
    assert uv.entry_files(dev) == ["bastion-1-a.efi"]
    save_config(SimPlatform(dev), DeviceConfig(uv.PRODUCT, uv.HARDWARE))
    with uv.device_tpm(dev) as (_plat, tpm), HttpClient(server.url) as http:
        key = server.world.create_key()
        identity = provision(tpm, http, provisioning_key=key, serial="vm-0001")

    # the operator publishes release 2 and rolls it out to this device
    fleet = server.world.fleet_id
    cli(server.env, "release", "server", "keyring", fleet, "--set", str(folder / "ring.pem"),
        "--server", server.url)  # fmt: skip
    cli(server.env, "release", "server", "publish", fleet, str(release.bundle),
        "--server", server.url, "--json")  # fmt: skip
    wave = f"vm:devices={identity.device_id}:failure=0"
    cli(server.env, "rollout", "start", fleet, "--release", "2", "--wave", wave,
        "--server", server.url, "--json")  # fmt: skip

    boot_a = uv.qemu_boot(dev, folder / "boot-a", boot_vm, sb_vars)
    assert boot_a.outcome is Outcome.RUNNING, (boot_a.reason, _serial(boot_a)[-3000:])

    with uv.device_tpm(dev) as (plat, tpm):
        installed = install.install(plat, FileSource(release.bundle), [keys.ca], tpm=tpm)
    boot_b = uv.qemu_boot(dev, folder / "boot-b", boot_vm, sb_vars)
    return World(dev, folder, release, identity, boot_a, boot_b, installed)


# --- slot a, then the install --------------------------------------------------------------


def test_slot_a_boots_in_qemu_and_unlocks_the_data_volume(world: World) -> None:
    result, serial = world.boot_a, _serial(world.boot_a)
    assert result.report.efivars["SecureBoot"] == "1"
    assert result.report.efivars["LoaderEntrySelected"] == "bastion-1-a.efi"
    assert "LoaderBootCountPath" not in result.report.efivars  # blessed: nothing counted
    assert re.search(r"^BASTION: data unlocked /dev/vda\d\r?$", serial, re.M), serial[-3000:]
    # the guest read the booted UKI's SVN and the fuse counter from the TPM's NV
    assert "BASTION: slot bastion-1-a.efi svn 1 fuses 1" in serial


def test_install_writes_slot_b_and_a_counted_entry(world: World) -> None:
    done = world.installed
    assert (done.slot, done.version, done.svn) == ("b", "2", 2)
    assert done.entry == "bastion-2-b+3-0.efi"
    # the filled slot's partitions carry the PARTUUIDs its UKI's roothash= names (DPS)
    layout = SimPlatform(world.dev).disk_layout()
    want = gpt.verity_partition_uuids(world.release.root_hash)
    assert (layout.find(root_part("b")).part_guid, layout.find(verity_part("b")).part_guid) == want


# --- slot b in trial, then the commit -------------------------------------------------------


def test_systemd_boot_tries_b_and_counts_the_try_on_the_esp(world: World) -> None:
    result, serial = world.boot_b, _serial(world.boot_b)
    assert result.outcome is Outcome.RUNNING, (result.reason, serial[-3000:])
    efivars = result.report.efivars
    assert efivars["LoaderEntrySelected"] == "bastion-2-b+3-0.efi"
    assert efivars["LoaderBootCountPath"] == "\\EFI\\Linux\\bastion-2-b+2-1.efi"
    assert f"roothash={world.release.root_hash.hex()}" in serial  # B's root came up
    assert "BASTION: slot bastion-2-b+2-1.efi svn 2 fuses 1" in serial


def test_slot_b_unlocks_the_data_volume_through_the_signed_policy(world: World) -> None:
    serial = _serial(world.boot_b)
    assert re.search(r"^BASTION: data unlocked /dev/vda\d\r?$", serial, re.M), serial[-3000:]
    assert f"BASTION: health {uv.BOOT_OK} exit 0: boot ok" in serial


def test_health_commit_blesses_b_then_raises_the_fuses_and_a_is_refused(
    world: World, boot_vm: BootVm, sb_vars: bytes
) -> None:
    dev = uv.fork_device(world.dev, world.folder / "committed")
    # the guest's rename, read back from the ESP inside the disk file
    assert uv.entry_files(dev) == ["bastion-1-a.efi", "bastion-2-b+2-1.efi"]
    assert uv.fuse_counter(dev) == 1
    events: list[UpdateEvent] = []
    with uv.device_tpm(dev) as (plat, tpm):
        probe = uv.GuestHealth(_serial(world.boot_b))
        done = commit.settle(plat, probe=probe, report=events.append, tpm=tpm)
    assert (done.action, done.slot, done.reason) == ("committed", "b", "healthy")
    assert uv.entry_files(dev) == ["bastion-1-a.efi", "bastion-2-b.efi"]  # blessed
    assert uv.fuse_counter(dev) == 2  # TPM NV bits, the swtpm state QEMU boots with
    assert [(e.result, e.svn, e.fuse_counter) for e in events] == [("committed", 2, 2)]

    # A is refused from now on. The slot choice skips it (SVN 1 < fuses 2) ...
    plat = SimPlatform(dev)
    records = slots.load_records(plat)
    found = [e for e in slots.entries(plat.esp()) if e.slot == "a"]
    digests = slots.uki_digests(plat.esp(), found)
    assert slots.choose(found, records, digests, 2) is None
    assert slots.choose(found, records, digests, 1) == found[0]
    # ... and with B's entry gone (a stale ESP, or an attacker), systemd-boot loads A,
    # whose SVN the initrd compares with the TPM fuses before it touches the data volume
    attacked = uv.fork_device(dev, world.folder / "attacked")
    SimPlatform(attacked).esp().remove(f"{slots.ENTRY_DIR}/bastion-2-b.efi")
    sim_copy = uv.fork_device(attacked, world.folder / "attacked-sim")
    refused = "stub: bastion-1-a.efi has security version 1, below the fuse counter 2"
    with pytest.raises(RollbackError, match=re.escape(refused)):
        EfiBootChain(SimPlatform(sim_copy)).run()
    result = uv.qemu_boot(attacked, world.folder / "boot-a-refused", boot_vm, sb_vars)
    serial = _serial(result)
    assert result.report.efivars["LoaderEntrySelected"] == "bastion-1-a.efi"
    assert result.outcome is Outcome.FAILED, (result.reason, serial[-3000:])
    assert result.reason == (
        "rollback: bastion-1-a.efi has security version 1, below the fuse counter 2"
    )
    assert "BASTION: data unlocked" not in serial and "BASTION: running" not in serial


# --- the other path: B fails its health check, A comes back, the server is told -------------


def test_failed_health_check_falls_back_to_a_and_the_server_shows_why(
    world: World, server: Server, boot_vm: BootVm, sb_vars: bytes
) -> None:
    dev = uv.fork_device(world.dev, world.folder / "fell-back")
    config = DeviceConfig(uv.PRODUCT, uv.HARDWARE, health=DEVICE_HEALTH)
    save_config(SimPlatform(dev), config)
    serial_b = _serial(world.boot_b)
    assert f"BASTION: health {uv.APP_SELFTEST} exit 3: {uv.APP_FAILURE}" in serial_b
    with uv.device_tpm(dev) as (plat, tpm):
        failed = commit.settle(plat, probe=uv.GuestHealth(serial_b), tpm=tpm)
    reason = f"command {uv.APP_SELFTEST}: exited 3 in the guest: {uv.APP_FAILURE}"
    assert (failed.action, failed.slot, failed.reason) == ("failed", "b", reason)
    (bad,) = [n for n in uv.entry_files(dev) if n.startswith("bastion-2-b")]
    assert bls.parse(bad).bad, bad  # +0-N: systemd-boot sorts it last

    result = uv.qemu_boot(dev, world.folder / "boot-fallback", boot_vm, sb_vars)
    serial = _serial(result)
    assert result.outcome is Outcome.RUNNING, (result.reason, serial[-3000:])
    assert result.report.efivars["LoaderEntrySelected"] == "bastion-1-a.efi"
    assert re.search(r"^BASTION: data unlocked /dev/vda\d\r?$", serial, re.M), serial[-3000:]
    assert "BASTION: slot bastion-1-a.efi svn 1 fuses 1" in serial
    assert uv.fuse_counter(dev) == 1

    # settle after the fallback boot: the device's report, signed in its TPM, over HTTP
    answers: list[dict[str, object]] = []
    with uv.device_tpm(dev) as (plat, tpm), HttpClient(server.url) as http:
        token = world.identity.api_key(tpm)

        def report(event: UpdateEvent) -> None:
            fields = ReportFields(
                world.identity.device_id,
                event.version,
                event.slot,
                event.svn,
                UpdateResult(event.result.replace("-", "_")),
                event.reason,
            )
            answers.append(report_update(tpm, world.identity.key, http, token, fields))

        fell = commit.settle(plat, report=report, tpm=tpm)
    assert (fell.action, fell.slot, fell.reason) == ("fell-back", "a", reason)
    assert len(answers) == 1 and answers[0]["rollout_state"] == "paused", answers
    # the operator sees it: the rollout paused by itself, the device "fell back" and why
    fleet = server.world.fleet_id
    status = cli(server.env, "rollout", "status", fleet, "--server", server.url)
    assert f"{world.identity.device_id}: fell back: {reason}" in str(status), status
    shown = cli(server.env, "rollout", "status", fleet, "--server", server.url, "--json")
    assert isinstance(shown, dict) and shown["state"] == "paused"
    assert shown["problems"] == [
        {
            "device_id": world.identity.device_id,
            "wave": 0,
            "result": "fell_back",
            "reason": reason,
            "reported_at": shown["problems"][0]["reported_at"],  # type: ignore[index]
        }
    ]
