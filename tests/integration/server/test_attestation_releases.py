"""The verdict judges the release a device should run (ADR 0037), on SQLite and PostgreSQL.

A fleet with two releases whose golden values are recorded (1.0 and 2.0, signed with the
fleet's product key) and no golden sets of its own. Devices booted 1.0 or 2.0 (their
software TPM measured it). What a device should run: its rollout wave's release, else
the fleet target, and the release of its newest signed update report. Negative table:
each case names the device, what it should run and the failure ids it gets.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.attestkit import boot_events, extend, golden_of

from bastion.device.attest import attest
from bastion.device.provision import DeviceIdentity
from bastion.device.update.report import ReportFields, build_report
from bastion.formats import eventlog as el
from bastion.formats.update_report import UpdateResult
from bastion.io.http import HttpClient
from bastion.tpm.software import SoftwareTpm
from bastion.trust.keys import KeyAlgorithm, generate_private_key
from bastion.trust.signer import SoftwareSigner
from bastion.trust.verdict import sign_golden

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration

PRODUCT = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
V1 = boot_events()
V2 = boot_events(kernel=b"kernel v2", svn=5)
V9 = boot_events(kernel=b"kernel v9", svn=9)
GOOD = {"selinux": "enforcing", "randomize_va_space": 2}


def _pem(signer: SoftwareSigner) -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        signer.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetWorld]:
    with shared_world(request.param, tmp_path_factory.mktemp("attest-rel")) as w:
        r = w.client.put(
            f"/v1/fleets/{w.other_fleet_id}/attestation",
            json={"product_key": _pem(PRODUCT)},
            headers=w.headers["admin"],
        )
        assert r.status_code == 200, r.text
        yield w


class Dev:
    """An enrolled device of the fleet that booted ``events``."""

    def __init__(self, world: FleetWorld, folder: Path, serial: str, events: list[el.Event]):
        folder.mkdir(parents=True, exist_ok=True)
        self.world = world
        self.tpm = SoftwareTpm(folder / "tpm.state")
        self.log = extend(self.tpm, events)
        key = world.create_key(fleet_id=world.other_fleet_id)
        self.identity: DeviceIdentity = world.enrol(self.tpm, key, serial=serial)
        self.headers = world.device_headers(self.identity, self.tpm)

    @property
    def id(self) -> str:
        return self.identity.device_id

    def verdict(self) -> tuple[set[str], str | None]:
        got = attest(self.tpm, self.identity, HttpClient.over(self.world.client), self.log, GOOD)
        return {f["id"] for f in got["failures"]}, got["release"]

    def report(self, version: str, result: str) -> None:
        c = self.world.client
        nonce = c.post("/v1/device/update/report-nonce", headers=self.headers).json()["nonce"]
        fields = ReportFields(self.id, version, "a", 1, UpdateResult(result), "")
        signed = build_report(  # the TPM clock attested by the AK (ADR 0038)
            self.tpm, self.identity.key, fields, base64.b64decode(nonce), ak=self.identity.ak
        )
        body = {"report": base64.b64encode(signed).decode()}
        got = c.post("/v1/device/update/report", json=body, headers=self.headers)
        assert got.status_code == 200, got.text


def _release(world: FleetWorld, version: str, events: list[el.Event] | None, svn: int) -> str:
    c = world.client
    fleet = world.other_fleet_id
    made = c.post(
        f"/v1/fleets/{fleet}/releases/external",
        json={
            "url": f"https://cdn.example.org/{version}.raucb",
            "length": 4096,
            "sha256": "aa" * 32,
            "version": version,
            "compatible": "bastion-test",
            "svn": svn,
        },
        headers=world.headers["operator"],
    )
    assert made.status_code == 201, made.text
    rid: str = made.json()["id"]
    if events is not None:
        statement = sign_golden(golden_of(events, svn=svn, version=version), PRODUCT)
        put = c.put(
            f"/v1/fleets/{fleet}/releases/{rid}/golden",
            json={"statement": base64.b64encode(statement).decode()},
            headers=world.headers["admin"],
        )
        assert put.status_code == 200, put.text
    return rid


def _target(world: FleetWorld, release: str | None) -> None:
    got = world.client.put(
        f"/v1/fleets/{world.other_fleet_id}/target-release",
        json={"release_id": release},
        headers=world.headers["operator"],
    )
    assert got.status_code == 200, got.text


def _rollout(world: FleetWorld, release: str, devices: list[str]) -> dict[str, Any]:
    got = world.client.post(
        f"/v1/fleets/{world.other_fleet_id}/rollouts",
        json={"release_id": release, "waves": [{"name": "named", "devices": devices}]},
        headers=world.headers["operator"],
    )
    assert got.status_code == 201, got.text
    out: dict[str, Any] = got.json()
    return out


def test_verdict_judges_the_release_the_device_should_run(
    world: FleetWorld, tmp_path: Path
) -> None:
    one = Dev(world, tmp_path / "one", "should-one", V1)
    two = Dev(world, tmp_path / "two", "should-two", V2)
    # nothing signed at all yet: the release cannot be judged
    assert one.verdict() == ({"release.unknown"}, None)
    r1 = _release(world, "1.0", V1, 3)
    r2 = _release(world, "2.0", V2, 5)
    _release(world, "3.0", None, 9)  # no golden values: it plays no part

    # (device, what it should run, expected failure ids, release named)
    # -- no target, no report: it should run nothing in particular
    assert one.verdict() == ({"release.unexpected"}, "1.0")
    # -- the fleet target
    _target(world, r1)
    assert one.verdict() == (set(), "1.0")
    assert two.verdict() == ({"release.unexpected"}, "2.0")  # 2.0 was never given to it
    _target(world, r2)
    assert two.verdict() == (set(), "2.0")
    assert one.verdict() == ({"release.unexpected"}, "1.0")  # 1.0 is no longer the target
    # -- its newest signed report: it fell back to 1.0 and says so
    one.report("1.0", "fell_back")
    assert one.verdict() == (set(), "1.0")
    # -- a device that boots a kernel no release has: judged against what it should run
    nine = Dev(world, tmp_path / "nine", "should-nine", V9)
    ids, release = nine.verdict()
    assert "pcr.mismatch.11" in ids and "component.kernel.mismatch" in ids and release is None
    assert "release.unexpected" not in ids and "release.unknown" not in ids

    # -- a rollout of 1.0: the wave's release is what its devices should run
    _target(world, None)
    late = Dev(world, tmp_path / "late", "should-late", V1)
    waiting = Dev(world, tmp_path / "wait", "should-wait", V2)
    _rollout(world, r1, [two.id, late.id, waiting.id])
    assert late.verdict() == (set(), "1.0")
    # two runs 2.0: no longer the target (there is none) nor its wave's release, no report
    assert two.verdict() == ({"release.unexpected"}, "2.0")
    two.report("2.0", "committed")  # its signed report says it runs 2.0
    assert two.verdict() == (set(), "2.0")
    # a device of the open wave that has not installed the wave's release yet runs the
    # fleet target, which it should run until it does (gating must not bar its update)
    assert waiting.verdict() == ({"release.unexpected"}, "2.0")  # no target: 2.0 is not for it
    _target(world, r2)
    assert waiting.verdict() == (set(), "2.0")
    _target(world, None)
    # outside the rollout's waves and without a target: 1.0 is not for it
    outside = Dev(world, tmp_path / "out", "should-out", V1)
    assert outside.verdict() == ({"release.unexpected"}, "1.0")


def test_release_golden_values_enforce_gating(world: FleetWorld, tmp_path: Path) -> None:
    """A fleet whose golden values come only from its releases still gates devices."""

    def golden_count() -> int:
        got = world.client.get(
            f"/v1/fleets/{world.other_fleet_id}/attestation", headers=world.headers["viewer"]
        )
        assert got.status_code == 200, got.text
        count: int = got.json()["golden_count"]
        return count

    if golden_count() == 0:  # under xdist the test above may have run on another worker
        _release(world, "1.0", V1, 3)
        _release(world, "2.0", V2, 5)
    assert golden_count() >= 2
    fresh = Dev(world, tmp_path / "gate", "gate-dev", V1)
    blocked = world.client.get("/v1/device/config", headers=fresh.headers)
    assert blocked.status_code == 403 and blocked.json()["error"] == "attestation_required"
