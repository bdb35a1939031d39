"""The agent's updater decides (ADR 0038): the fleet says which version, TUF must agree.

Negative table first: every disagreement between the fleet's target and the signed TUF
metadata installs nothing and raises with both sides named; a failed install is
reported ``failed`` in a report the real verifier accepts; a release whose trial failed
here is not installed again. Then the report bookkeeping (a report the server did not
take is sent later, once) and the check interval.

The device is the real sim platform (tests/updatekit.py); the fleet server is a small
double that issues nonces and checks each report with
:func:`bastion.trust.update_report.verify_report` (the server's own check, end to end in
tests/integration/server/test_agent_update.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tests.updatekit import KEYS, FakeTarget, FakeTufClient, ReleaseFiles, make_device

from bastion.device.agent.updater import Updater, interval_of
from bastion.device.platform.sim import SimPlatform
from bastion.device.update import commit, slots, tuf_update
from bastion.device.update.install import write_result
from bastion.errors import (
    ConflictError,
    FormatError,
    NotFoundError,
    TransportError,
    VerificationError,
)
from bastion.formats.update_report import SignedReport, UpdateReport
from bastion.tpm.fuses import TpmFuseBank
from bastion.tpm.software import SoftwareTpm
from bastion.trust.update_report import verify_clock, verify_report

BLOCK = 4096
DEVICE = "dev-1"


@dataclass(frozen=True)
class Keys:
    key: Any
    ak: Any


class Tuf(FakeTufClient):
    closed = 0

    def candidates(self, product: str, channel: str) -> list[FakeTarget]:
        return [t for t in self.targets if t.product == product and t.channel == channel]

    def close(self) -> None:
        self.closed += 1


class Fleet:
    """The device routes the updater calls: target, report nonce, report."""

    def __init__(self, keys: Any, target: dict[str, Any]) -> None:
        self.key_public = keys.key.public
        self.ak_public = keys.ak.public
        self.clocks: list[Any] = []
        self.target = target
        self.nonces: list[bytes] = []
        self.reports: list[UpdateReport] = []
        self.down = False

    def call_object(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> dict[str, Any]:
        assert token is None  # the agent's client signs; no API key
        if self.down:
            raise TransportError(f"{method} {path}: connection refused")
        if path == "/v1/device/target-release":
            return dict(self.target)
        if path == "/v1/device/update/report-nonce":
            self.nonces.append(os.urandom(32))
            return {"nonce": base64.b64encode(self.nonces[-1]).decode()}
        assert path == "/v1/device/update/report"
        signed = base64.b64decode(body["report"])
        report = verify_report(signed, self.key_public, device_id=DEVICE, open_nonces=self.nonces)
        parsed = SignedReport.parse(signed)
        self.clocks.append(
            verify_clock(parsed, report, ak_public=self.ak_public, key_public=self.key_public)
        )
        self.nonces.remove(report.nonce)
        self.reports.append(report)
        return {"rollout_state": None}


def _target(version: str, svn: int, sha: str = "00" * 32) -> FakeTarget:
    return FakeTarget(
        f"bastion-edge/stable/rel-{version}.raucb", 4096, sha, version, svn, "bastion-edge",
        ("board-x",), "stable", None,
    )  # fmt: skip


@pytest.fixture
def device(tmp_path: Path) -> tuple[SimPlatform, SoftwareTpm, Any]:
    """The sim device running 1.0, its TPM and its keys (identity key and AK)."""
    base = b"".join(hashlib.sha256(bytes([i])).digest() * 128 for i in range(8))
    factory = ReleaseFiles("1.0", 1, base, b"v" * BLOCK, b"MZ" + b"1" * 510, tmp_path / "none")
    plat = make_device(tmp_path / "dev", factory)
    plat.store(tuf_update.KEYRING, KEYS.ca.public_bytes(serialization.Encoding.PEM))
    tpm = SoftwareTpm(tmp_path / "tpm.state")
    return plat, tpm, Keys(tpm.create_signing_key(), tpm.create_ak())


def _updater(
    device: tuple[SimPlatform, SoftwareTpm, Any], fleet: Fleet, tuf: Tuf, reboots: list[str]
) -> Updater:
    plat, tpm, key = device
    return Updater(
        plat,
        plat.folder / "tuf-metadata",
        fleet,  # type: ignore[arg-type]
        tpm=tpm,
        identity_key=lambda: key.key,
        ak=lambda: key.ak,
        device_id=DEVICE,
        reboot=lambda: reboots.append("reboot"),
        open_client=lambda: tuf,
    )


def _records(plat: SimPlatform) -> dict[str, Any]:
    return {s: (r.version, r.state) for s, r in slots.load_records(plat).items()}


REFUSALS = [
    # (fleet target, TUF targets, error, text)
    (
        {"release": "2.0"},
        [],
        VerificationError,
        "fleet's target 2.0 is not the release TUF offers this device (TUF offers nothing",
    ),
    (
        {"release": "2.0"},
        [_target("3.0", 3)],
        VerificationError,
        "TUF offers 3.0",
    ),
    (
        {"release": "2.0", "sha256": "ab" * 32},
        [_target("2.0", 2, "cd" * 32)],
        VerificationError,
        f"SHA-256 {'ab' * 32}, the signed TUF target",
    ),
    (  # the fleet's release is older than the fuses allow: TUF never picks it
        {"release": "0.9"},
        [_target("0.9", 0)],
        VerificationError,
        "TUF offers nothing",
    ),
    (  # TUF and the fleet agree, the bundle is not where the target says
        {"release": "2.0"},
        [_target("2.0", 2)],
        NotFoundError,
        "does not exist",
    ),
]


@pytest.mark.parametrize(("fleet_target", "targets", "error", "text"), REFUSALS)
def test_disagreement_or_a_failed_install_installs_nothing(
    device: Any, tmp_path: Path, fleet_target: Any, targets: Any, error: Any, text: str
) -> None:
    plat, _tpm, key = device
    before = _records(plat)
    fleet = Fleet(key, fleet_target)
    tuf = Tuf(targets, str(tmp_path / "no-such-folder"))
    reboots: list[str] = []
    with pytest.raises(error, match=text.replace("(", r"\(").replace(".", r"\.")):
        _updater(device, fleet, tuf, reboots).update_now()
    assert _records(plat) == before and reboots == [] and tuf.closed == 1
    if error is NotFoundError:  # the install itself failed: the fleet hears it, signed
        [report] = fleet.reports
        assert (report.result.value, report.version, report.slot, report.svn) == (
            "failed", "2.0", "a", 1,
        )  # fmt: skip
        assert "does not exist" in report.reason
        assert report.tpm_clock > 0 and fleet.clocks[0].clock == report.tpm_clock  # attested
    else:
        assert fleet.reports == []


@pytest.mark.parametrize("fleet_target", [{"release": None}, {"release": "1.0"}])
def test_nothing_assigned_or_already_running_is_up_to_date(device: Any, fleet_target: Any) -> None:
    _plat, _tpm, key = device
    tuf = Tuf([_target("2.0", 2)], "unused")
    outcome = _updater(device, Fleet(key, fleet_target), tuf, []).update_now()
    assert outcome.action == "up-to-date" and not outcome.reboot
    assert tuf.refreshed == 0  # the fleet decides when: TUF is not even asked


def test_a_release_that_failed_its_trial_here_is_not_installed_again(device: Any) -> None:
    plat, _tpm, key = device
    rec = slots.load_records(plat)["a"]
    failed = slots.SlotRecord(
        slot="b", version="2.0", svn=2, bundle="x", uki_sha256=rec.uki_sha256,
        rootfs_sha256=rec.rootfs_sha256, rootfs_size=rec.rootfs_size, generation=2,
        state=slots.SlotState.FAILED, reason="command false: exited 1",
    )  # fmt: skip
    slots.save_record(plat, failed)
    tuf = Tuf([_target("2.0", 2)], "unused")
    with pytest.raises(ConflictError, match=r"2\.0 failed its trial on this device \(command"):
        _updater(device, Fleet(key, {"release": "2.0"}), tuf, []).update_now()
    assert tuf.refreshed == 0


def test_a_report_the_server_did_not_take_is_sent_later_once(device: Any) -> None:
    plat, _tpm, key = device
    fleet = Fleet(key, {"release": "1.0"})
    updater = _updater(device, fleet, Tuf([], "unused"), [])
    event = commit.UpdateEvent("committed", "a", "1.0", 1, "b.raucb", "healthy", 1)
    write_result(plat, **asdict(event), reported=False)  # as settle leaves it when cut off
    fleet.down = True
    with pytest.raises(TransportError):
        updater.send_pending()
    assert commit.last_result(plat)["reported"] is False
    fleet.down = False
    assert updater.send_pending() is True
    assert updater.send_pending() is False  # once
    [report] = fleet.reports
    assert (report.result.value, report.version, report.slot, report.svn) == (
        "committed", "1.0", "a", 1,
    )  # fmt: skip
    assert commit.last_result(plat)["reported"] is True


def test_tick_checks_once_per_interval_and_reboots_after_an_install(device: Any) -> None:
    _plat, _tpm, key = device
    fleet = Fleet(key, {"release": "1.0"})
    tuf = Tuf([], "unused")
    updater = _updater(device, fleet, tuf, [])
    checks: list[float] = []
    real = updater.update_now

    def counted() -> Any:
        checks.append(1)
        return real()

    updater.update_now = counted  # type: ignore[method-assign]
    assert updater.tick(0.0, 100.0) is None  # the first check one interval after the start
    assert updater.tick(99.0, 100.0) is None
    outcome = updater.tick(100.0, 100.0)
    assert outcome is not None and outcome.action == "up-to-date" and len(checks) == 1
    assert updater.tick(150.0, 100.0) is None and len(checks) == 1
    assert updater.tick(1000.0, 0.0) is None and len(checks) == 1  # 0: off


@pytest.mark.parametrize(
    ("config", "expected"),
    [(None, 60.0), ({}, 60.0), ({"update_check_seconds": 30}, 30.0),
     ({"update_check_seconds": 0}, 0.0)],
)  # fmt: skip
def test_interval_from_the_fleet_config(config: Any, expected: float) -> None:
    assert interval_of(config, 60.0) == expected


@pytest.mark.parametrize("bad", [-1, "60", True, None, [60]])
def test_a_malformed_fleet_interval_is_refused(bad: Any) -> None:
    with pytest.raises(FormatError, match="update_check_seconds"):
        interval_of({"update_check_seconds": bad}, 60.0)


class _Channel:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


@pytest.mark.parametrize(
    ("target", "ok", "says"),
    [
        ({"release": "1.0"}, True, "running 1.0, the fleet's target"),
        ({"release": "2.0"}, False, "is not the release TUF offers this device"),
    ],
)
def test_check_update_runs_the_updater_and_answers(
    device: Any, tmp_path: Path, target: Any, ok: bool, says: str
) -> None:
    import datetime as dt

    from bastion.device.agent.agent import Agent
    from bastion.io.clock import FixedClock
    from bastion.io.http import HttpClient

    _plat, _tpm, key = device
    reboots: list[str] = []
    updater = _updater(device, Fleet(key, target), Tuf([], "unused"), reboots)
    http = HttpClient("http://127.0.0.1:9", signer=lambda m, t, b: {})
    now = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
    agent = Agent(http, tmp_path / "data", None, lambda h: None, FixedClock(now), updater=updater)  # type: ignore[arg-type,return-value]
    channel = _Channel()
    message = {"type": "command", "id": "c1", "kind": "check-update", "args": {}}
    result = agent.handle(message, channel)  # type: ignore[arg-type]
    assert (result["ok"], channel.sent[0]["ok"]) == (ok, ok)
    assert says in result["output"] and reboots == []


def _b_in_trial(plat: Any, a: slots.SlotRecord) -> None:
    """Record slot b as version 2.0 (SVN 2) in trial, with slot a's contents."""
    slots.save_record(
        plat,
        slots.SlotRecord(
            slot="b", version="2.0", svn=2, bundle="x", uki_sha256=a.uki_sha256,
            rootfs_sha256=a.rootfs_sha256, rootfs_size=a.rootfs_size, generation=2,
            state=slots.SlotState.TRIAL,
        ),
    )  # fmt: skip


def test_a_fallback_is_reported_and_noted_once(device: Any) -> None:
    plat, _tpm, key = device
    rec = slots.load_records(plat)["a"]
    # slot b tried 2.0 and ran out of tries: its entry is bad, the firmware booted a
    _b_in_trial(plat, rec)
    plat.esp().write(f"{slots.ENTRY_DIR}/bastion-2-b+0-3.efi", b"MZ")
    fleet = Fleet(key, {"release": "2.0"})
    notes: list[str] = []
    updater = _updater(device, fleet, Tuf([], "unused"), [])
    updater.note = notes.append
    for _ in range(3):
        assert updater.settle().action == "fell-back"
    [report] = fleet.reports
    assert (report.result.value, report.version, report.slot, report.svn) == (
        "fell_back", "2.0", "a", 1,
    )  # fmt: skip
    assert report.reason.startswith("out of boot tries")
    assert len([n for n in notes if "fell-back" in n]) == 1


def test_settle_commits_into_the_tpm_fuses_of_a_tpm_fused_device(tmp_path: Path) -> None:
    """``"fuses": "tpm"``: the TPM the agent holds open is the fuse bank it blows."""
    base = b"".join(hashlib.sha256(bytes([i])).digest() * 128 for i in range(8))
    factory = ReleaseFiles("1.0", 1, base, b"v" * BLOCK, b"MZ" + b"1" * 510, tmp_path / "none")
    plat = make_device(tmp_path / "dev", factory, fuses="tpm")
    tpm = SoftwareTpm(plat.folder / "tpm.state")  # the device's own TPM, as the agent opens it
    keys = Keys(tpm.create_signing_key(), tpm.create_ak())
    rec = slots.load_records(plat)["a"]
    _b_in_trial(plat, rec)
    plat.esp().write(f"{slots.ENTRY_DIR}/bastion-2-b+2-1.efi", b"MZ")
    plat.store(slots.BOOTED, b'{"slot": "b", "stem": "bastion-2-b", "trial": true}')
    assert TpmFuseBank(tpm).counter() == 1
    fleet = Fleet(keys, {"release": "2.0"})
    updater = _updater((plat, tpm, keys), fleet, Tuf([], "unused"), [])
    assert updater.settle().action == "committed"
    assert TpmFuseBank(tpm).counter() == 2
    assert not (plat.folder / "fuses").exists()
    [report] = fleet.reports
    assert (report.result.value, report.version, report.slot) == ("committed", "2.0", "b")
    assert commit.last_result(plat)["fuse_counter"] == 2
