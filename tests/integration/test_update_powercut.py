"""Power cut at every write of install, commit and fallback, then at 1,000 random ones.

Each run starts from a device running release A (committed, fuses at its SVN) and plays
one scenario against a platform whose durable writes (partition writes, torn at a random
sector; ESP writes, renames and removals; fuse blows; store files; each GPT copy the
install's PARTUUID rewrite writes, backup then primary, torn at a random sector) stop at
write N. Then the device "reboots" (the firmware model of device/update/slots.py) and
recovers the way a device does: settle at each boot, install again when the update did
not finish. At every boot the chosen slot must be a signed one (its UKI and its rootfs
byte for byte those of a signed release), the root its UKI's ``roothash=`` names must be
found by PARTUUID in the GPT as firmware and the kernel read it (primary, backup when
the primary is damaged), be that slot's root and verify against the root hash
(trust/image.verify_efi_root, as the boot chain does), and its SVN must not be below the
fuses; a device where no slot can be chosen, or where these fail, is bricked. After
recovery both GPT copies must be intact and alike (none left torn). The count of bricked
devices is printed and must be 0; every run must also end where its scenario says.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from tests import updatekit as uk

from bastion.device.platform.base import Platform
from bastion.device.platform.sim import SimPlatform
from bastion.device.update import commit, health, install, slots, stream
from bastion.errors import BastionError
from bastion.formats import gpt
from bastion.storage.disk_image import gpt_ends
from bastion.trust.image import verify_efi_root

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BLOCKS = 16
RANDOM_CUTS = 1000
GPT_COPY_SECTORS = 34  # MBR, header, 32 sectors of entries (the backup: 33; capped there)
HEALTHY: health.Probe = lambda _check: None  # noqa: E731
SICK: health.Probe = lambda check: f"{check.describe()} failed"  # noqa: E731


class BrickedError(Exception):
    pass


def _install(plat: Platform, rel: uk.ReleaseFiles) -> None:
    source = stream.FileSource(rel.bundle)
    try:
        install.install(plat, source, [uk.KEYS.ca], chunk=8192, journal_every=1)
    finally:
        source.close()


def _scenario_commit(plat: Platform, b: uk.ReleaseFiles) -> None:
    _install(plat, b)
    slots.firmware_boot(plat)
    commit.settle(plat, probe=HEALTHY)


def _scenario_fallback(plat: Platform, b: uk.ReleaseFiles) -> None:
    _install(plat, b)
    slots.firmware_boot(plat)
    commit.settle(plat, probe=SICK)
    slots.firmware_boot(plat)
    commit.settle(plat, probe=SICK)


def _scenario_out_of_tries(plat: Platform, b: uk.ReleaseFiles) -> None:
    _install(plat, b)
    for _ in range(slots.TRIES + 1):
        slots.firmware_boot(plat)  # the new slot hangs before its health checks
    commit.settle(plat, probe=SICK)


SCENARIOS: dict[str, tuple[Callable[[Platform, uk.ReleaseFiles], None], health.Probe, str]] = {
    "commit": (_scenario_commit, HEALTHY, "b"),
    "fallback": (_scenario_fallback, SICK, "a"),
    "out-of-tries": (_scenario_out_of_tries, SICK, "a"),
}


def _check_boot(plat: SimPlatform, signed: dict[str, uk.ReleaseFiles]) -> slots.Booted:
    """Reboot; the slot chosen must be signed and not below the fuses."""
    try:
        boot = slots.firmware_boot(plat)
    except Exception as exc:
        raise BrickedError(f"no slot boots: {exc}") from exc
    rec = slots.load_records(plat)[boot.slot]
    rel = signed.get(rec.version)
    if rel is None:
        raise BrickedError(f"slot {boot.slot} runs unknown version {rec.version}")
    entry = [e for e in slots.entries_of(plat.esp(), boot.slot) if e.stem == boot.stem]
    uki = plat.esp().read(entry[0].path)
    if hashlib.sha256(uki).hexdigest() != rel.uki_sha256:
        raise BrickedError(f"slot {boot.slot} boots a UKI that is not release {rel.version}'s")
    if plat.read_partition(slots.root_partition(boot.slot), len(rel.rootfs)) != rel.rootfs:
        raise BrickedError(f"slot {boot.slot} root is not release {rel.version}'s rootfs")
    root_hash = uk.uki_root_hash(uki)
    if root_hash is None:
        raise BrickedError(f"slot {boot.slot} boots a UKI without roothash=")
    try:
        root = verify_efi_root(plat, plat.disk_layout(), root_hash)
    except BastionError as exc:
        raise BrickedError(f"slot {boot.slot}: the initrd finds no verified root: {exc}") from exc
    if root != slots.root_partition(boot.slot):
        raise BrickedError(f"slot {boot.slot} boots, but its roothash= finds partition {root}")
    if rel.svn < plat.fuses().counter():
        raise BrickedError(
            f"slot {boot.slot} runs SVN {rel.svn} below fuses {plat.fuses().counter()}"
        )
    return boot


def _recover(
    plat: SimPlatform, probe: health.Probe, b: uk.ReleaseFiles, signed: dict[str, uk.ReleaseFiles]
) -> slots.Booted:
    """Boot, settle, and install again until the device is stable."""
    boot = _check_boot(plat, signed)
    for _ in range(12):
        settled = commit.settle(plat, probe=probe)
        records = slots.load_records(plat)
        other = records.get("b")
        unfinished = other is None or other.state == slots.SlotState.INSTALLING
        if boot.slot == "a" and unfinished:
            _install(plat, b)  # resumes from the journal
        elif settled.action in ("committed", "fell-back", "none") and (
            (boot.slot == "b" and records["b"].state == slots.SlotState.COMMITTED)
            or (
                boot.slot == "a"
                and other is not None
                and other.state == slots.SlotState.FAILED
                and commit.last_result(plat).get("result") == "fell-back"
            )
        ):
            return boot
        boot = _check_boot(plat, signed)
    raise BrickedError(f"device did not settle: booted {boot}, records {slots.load_records(plat)}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, uk.ReleaseFiles, dict]:  # type: ignore[type-arg]
    folder = tmp_path_factory.mktemp("powercut")
    a_blocks = uk.rootfs_blocks(11, BLOCKS)
    b_blocks = list(a_blocks)
    for i in (2, 3, 9):
        b_blocks[i] = bytes([i]) * uk.BLOCK
    a = uk.make_release(folder / "rel", "1.0", 1, b"".join(a_blocks))
    b = uk.make_release(folder / "rel", "1.1", 2, b"".join(b_blocks))
    template = folder / "template"
    uk.make_device(
        template,
        a,
        root_size=BLOCKS * uk.BLOCK,
        verity_size=16 * 1024,
        health={"required": [{"command": ["app", "--selftest"]}]},
    )
    return template, b, {"1.0": a, "1.1": b}


def _check_gpt_copies(plat: SimPlatform) -> None:
    head, tail, sectors = gpt_ends(plat.disk)
    try:
        primary, backup = gpt.parse(head, sectors), gpt.parse_backup(tail, sectors)
    except BastionError as exc:
        raise BrickedError(f"a GPT copy is left damaged: {exc}") from exc
    if primary != backup:
        raise BrickedError("the two GPT copies are left different")


def _run(
    world: tuple[Path, uk.ReleaseFiles, dict],  # type: ignore[type-arg]
    folder: Path,
    name: str,
    n: int,
    seed: int,
    torn_sectors: int | None = None,
) -> uk.Cutter:
    """Play scenario ``name`` with a cut at write ``n``; return its write counter
    (``writes`` 0 if it completed) or raise BrickedError."""
    template, b, signed = world
    scenario, probe, final = SCENARIOS[name]
    plat = uk.clone_device(template, folder)
    cutter = uk.Cutter(n, seed, torn_sectors)
    try:
        scenario(uk.CutPlatform(plat, cutter), b)
        completed = True
    except uk.PowerCut:
        completed = False
    if completed and n:
        cutter.writes = 0
        return cutter
    boot = _recover(plat, probe, b, signed)
    if boot.slot != final:
        raise BrickedError(f"scenario {name} cut at {n} ended in slot {boot.slot}, not {final}")
    expected_fuses = 2 if final == "b" else 1
    if plat.fuses().counter() != expected_fuses:
        raise BrickedError(f"scenario {name} cut at {n}: fuses {plat.fuses().counter()}")
    _check_gpt_copies(plat)
    return cutter


def test_power_cut_at_every_write_then_random(
    world: tuple[Path, uk.ReleaseFiles, dict],  # type: ignore[type-arg]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the cuts are simulated at the write calls, so the disk's own fsync adds nothing
    # but time here (some 30 syncs per run, 1,100 runs); durability of one write is the
    # file system's part, tested in tests/unit/io
    monkeypatch.setattr(os, "fsync", lambda _fd: None)
    rnd = random.Random(20261206)
    totals = {}
    runs = 0
    torn = 0
    bricked: list[str] = []
    for name in SCENARIOS:
        clean = _run(world, tmp_path / f"{name}-clean", name, 0, 0)
        totals[name] = clean.writes
        assert totals[name] > 10, f"scenario {name} made only {totals[name]} writes"
        # the install's PARTUUID rewrite ran: both GPT copies are write points
        assert len(clean.gpt_points) == 2, f"scenario {name} GPT writes: {clean.gpt_points}"
        for n in range(1, totals[name] + 1):
            runs += 1
            try:
                _run(world, tmp_path / f"{name}-{n}", name, n, n)
            except BrickedError as exc:
                bricked.append(f"{name} @ write {n}: {exc}")
        # a GPT copy torn after each of its sectors (0: none written, all: whole copy)
        for n in clean.gpt_points:
            for keep in range(GPT_COPY_SECTORS + 1):
                runs += 1
                torn += 1
                try:
                    _run(world, tmp_path / f"{name}-{n}-{keep}", name, n, n, keep)
                except BrickedError as exc:
                    bricked.append(f"{name} @ GPT write {n} torn after {keep} sectors: {exc}")
    names = list(SCENARIOS)
    for i in range(RANDOM_CUTS):
        name = names[i % len(names)]
        n = rnd.randint(1, totals[name])
        runs += 1
        try:
            _run(world, tmp_path / f"r{i}", name, n, rnd.randrange(1 << 30))
        except BrickedError as exc:
            bricked.append(f"{name} @ random write {n}: {exc}")
    print(
        f"power cuts: {runs} runs ({', '.join(f'{k}: {v} writes' for k, v in totals.items())}"
        f" (2 of them GPT copies each), {torn} torn GPT copies"
        f", {RANDOM_CUTS} random); bricked devices: {len(bricked)}"
    )
    assert not bricked, "\n".join(bricked[:20])
