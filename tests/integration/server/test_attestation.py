"""Server attestation: challenges, verdicts, golden values, settings, and the gate.

The gating matrix runs every device route against a device in each state (fresh pass,
stale pass, failed, never attested) on SQLite and PostgreSQL: config and target release
answer 403 ``attestation_required`` unless the newest verdict passed within the fleet's
interval; attest, report (events), logs and the device's own record stay open.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.attestkit import SEL, boot_events, extend, golden_of

from bastion.device.attest import attest, build_evidence
from bastion.device.provision import DeviceIdentity
from bastion.io.http import HttpClient
from bastion.server.attestation.models import DEFAULT_INTERVAL
from bastion.tpm.software import SoftwareTpm
from bastion.trust.keys import KeyAlgorithm, generate_private_key
from bastion.trust.signer import SoftwareSigner
from bastion.trust.verdict import sign_golden

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration

PRODUCT = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
STRANGER = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
GOOD = {"selinux": "enforcing", "randomize_va_space": 2}


def _pem(signer: SoftwareSigner) -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        signer.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _statement(signer: SoftwareSigner = PRODUCT, **kw: Any) -> str:
    return base64.b64encode(sign_golden(golden_of(boot_events(), **kw), signer)).decode()


@contextmanager
def attested_world(backend: str, folder: Path, **settings: Any) -> Iterator[FleetWorld]:
    """A shared fleet world whose fleet requires SELinux enforcing and trusts PRODUCT's
    golden values (one statement recorded): the set-up of the gated-route tests."""
    with shared_world(backend, folder, **settings) as w:
        admin = w.headers["admin"]
        r = w.client.put(
            f"/v1/fleets/{w.fleet_id}/attestation",
            json={"product_key": _pem(PRODUCT), "posture_policy": {"require_selinux": "enforcing"}},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        r = w.client.post(
            f"/v1/fleets/{w.fleet_id}/attestation/golden",
            json={"statement": _statement()},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        yield w


def attested_world_fixture(stem: str, **settings: Any) -> Any:
    """A module-scoped ``world`` fixture over SQLite and PostgreSQL: :func:`attested_world`
    in a fresh folder named ``stem``, with ``settings`` (a module assigns it to ``world``)."""

    @pytest.fixture(scope="module", params=["sqlite", "postgresql"])
    def world(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[FleetWorld]:
        with attested_world(request.param, tmp_path_factory.mktemp(stem), **settings) as w:
            yield w

    return world


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetWorld]:
    with shared_world(request.param, tmp_path_factory.mktemp("attest")) as w:
        admin = w.headers["admin"]
        r = w.client.put(
            f"/v1/fleets/{w.fleet_id}/attestation",
            json={"product_key": _pem(PRODUCT), "posture_policy": {"require_selinux": "enforcing"}},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        r = w.client.post(
            f"/v1/fleets/{w.fleet_id}/attestation/golden",
            json={"statement": _statement()},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        yield w


class Dev:
    """An enrolled device that booted the golden image (its software TPM measured it)."""

    def __init__(self, world: FleetWorld, folder: Path, serial: str, fleet: str | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.world = world
        self.tpm = SoftwareTpm(folder / "tpm.state")
        self.log = extend(self.tpm, boot_events())
        key = world.create_key(fleet_id=fleet)
        self.identity: DeviceIdentity = world.enrol(self.tpm, key, serial=serial)
        self.headers = world.device_headers(self.identity, self.tpm)

    def attest(self, posture: dict[str, Any] | None = None) -> dict[str, Any]:
        return attest(
            self.tpm,
            self.identity,
            HttpClient.over(self.world.client),
            self.log,
            GOOD if posture is None else posture,
        )


# --- the flow ------------------------------------------------------------------------------------


def test_attest_passes_and_history_is_kept(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "att-flow")
    first = dev.attest()
    assert first["ok"], first["failures"]
    assert first["release"] == "1.0"
    second = dev.attest({"selinux": "permissive"})
    assert not second["ok"]
    assert [f["id"] for f in second["failures"]] == ["posture.selinux.permissive"]
    r = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{dev.identity.device_id}/attestations",
        headers=world.headers["viewer"],
    )
    assert r.status_code == 200, r.text
    assert [v["ok"] for v in r.json()] == [False, True]
    assert "device.attest" in world.audit_events()


def test_nonce_is_single_use_and_replay_fails(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "att-replay")
    c = world.client.post("/v1/device/attestation/challenge", headers=dev.headers).json()
    nonce = base64.b64decode(c["nonce"])
    evidence = build_evidence(dev.tpm, dev.identity.ak, nonce, SEL, dev.log, GOOD).to_json()
    r = world.client.post(
        "/v1/device/attestation", json={"evidence": evidence}, headers=dev.headers
    )
    assert r.json()["ok"], r.text
    # the same evidence again: no challenge open -> refused outright
    r = world.client.post(
        "/v1/device/attestation", json={"evidence": evidence}, headers=dev.headers
    )
    assert r.status_code == 403 and r.json()["error"] == "verification_failed", r.text
    # with a new challenge open, the old quote fails on its nonce (and gates the device)
    world.client.post("/v1/device/attestation/challenge", headers=dev.headers)
    r = world.client.post(
        "/v1/device/attestation", json={"evidence": evidence}, headers=dev.headers
    )
    assert [f["id"] for f in r.json()["failures"]] == ["quote.nonce"]
    assert world.client.get("/v1/device/config", headers=dev.headers).status_code == 403


def test_challenge_expires(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "att-expiry")
    c = world.client.post("/v1/device/attestation/challenge", headers=dev.headers).json()
    evidence = build_evidence(
        dev.tpm, dev.identity.ak, base64.b64decode(c["nonce"]), SEL, dev.log, GOOD
    ).to_json()
    world.ctx.clock.advance(301)
    r = world.client.post(
        "/v1/device/attestation", json={"evidence": evidence}, headers=dev.headers
    )
    assert r.status_code == 403, r.text


def test_golden_must_be_signed_by_the_product_key(world: FleetWorld) -> None:
    r = world.client.post(
        f"/v1/fleets/{world.fleet_id}/attestation/golden",
        json={"statement": _statement(STRANGER, version="9.9")},
        headers=world.headers["admin"],
    )
    assert r.status_code == 403 and r.json()["error"] == "verification_failed", r.text
    r = world.client.post(
        f"/v1/fleets/{world.other_fleet_id}/attestation/golden",
        json={"statement": _statement()},
        headers=world.headers["admin"],
    )
    assert r.status_code == 409, r.text  # no product key set in that fleet


def test_settings_validation(world: FleetWorld) -> None:
    url = f"/v1/fleets/{world.fleet_id}/attestation"
    for body in (
        {"pcr_selection": "sha1:0"},
        {"posture_policy": {"require_selinux": "maybe"}},
        {"product_key": "not a key"},
        {"interval_seconds": 1},
        {"interval_seconds": None},
        {"gating": None},
    ):
        r = world.client.put(url, json=body, headers=world.headers["admin"])
        assert r.status_code in (400, 422), (body, r.text)
    r = world.client.get(url, headers=world.headers["viewer"])
    assert r.json()["enforced"] is True
    assert r.json()["interval_seconds"] == DEFAULT_INTERVAL


def test_device_enrolled_without_ak_fails_unbound(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "att-legacy")
    from bastion.server.devices.models import Device

    with world.ctx.db.session() as session:
        row = session.get(Device, dev.identity.device_id)
        assert row is not None and row.ak_public == dev.identity.ak_public
        row.ak_public = None
        session.commit()
    verdict = dev.attest()
    assert [f["id"] for f in verdict["failures"]] == ["ak.unbound"]


# --- the gating matrix ----------------------------------------------------------------------------

GATED = [("GET", "/v1/device/config", None), ("GET", "/v1/device/target-release", None)]
OPEN = [
    ("GET", "/v1/device", None),
    ("PATCH", "/v1/device", {"note": "gate"}),
    ("POST", "/v1/device/logs", {"lines": ["hi"]}),
    ("POST", "/v1/device/events", {"events": [{"type": "boot"}]}),
    ("POST", "/v1/device/attestation/challenge", None),
    ("POST", "/v1/device/heartbeat", {"slot": "A"}),  # the agent's presence: never gated
    ("GET", "/v1/device/certificate", None),
    ("POST", "/v1/device/update/report-nonce", None),
]
# gated like target-release (AttestedDevice) but need a release id: test_releases.py
# fetches one; the report needs a TPM-signed body: test_rollouts.py (plain device route)
ELSEWHERE = {
    ("GET", "/v1/device/update/bundle/{release_id}"),
    ("POST", "/v1/device/update/report"),
}


def test_every_device_route_is_in_the_matrix(world: FleetWorld) -> None:
    paths = world.client.get("/openapi.json").json()["paths"]
    routes = {
        (method.upper(), path)
        for path, ops in paths.items()
        if path == "/v1/device" or path.startswith("/v1/device/")
        for method in ops
    }
    covered = {(m, p) for m, p, _ in GATED + OPEN} | {
        ("POST", "/v1/device/attestation"),
        # gated too; needs TPM evidence per request: test_agent_rotation.py proves the gate
        ("POST", "/v1/device/identity/rotate"),
    }
    covered |= ELSEWHERE
    assert routes == covered, routes ^ covered


def _fresh(dev: Dev) -> None:
    assert dev.attest()["ok"]


def _stale(dev: Dev) -> None:
    assert dev.attest()["ok"]
    dev.world.ctx.clock.advance(DEFAULT_INTERVAL + 1)


def _failed(dev: Dev) -> None:
    assert dev.attest()["ok"]
    assert not dev.attest({"selinux": "permissive"})["ok"]


def _never(dev: Dev) -> None:
    return None


STATES: dict[str, tuple[Callable[[Dev], None], bool]] = {
    "fresh pass": (_fresh, True),
    "stale pass": (_stale, False),
    "failed": (_failed, False),
    "never attested": (_never, False),
}


@pytest.mark.parametrize("state", list(STATES))
def test_gating_matrix(world: FleetWorld, tmp_path: Path, state: str) -> None:
    make, allowed = STATES[state]
    dev = Dev(world, tmp_path, f"gate-{state.replace(' ', '-')}")
    make(dev)
    problems = []
    for method, path, body in GATED + OPEN:
        r = world.client.request(method, path, json=body, headers=dev.headers)
        gated = (method, path, body) in GATED
        if gated and not allowed:
            if r.status_code != 403 or r.json().get("error") != "attestation_required":
                problems.append(f"{method} {path}: {r.status_code} {r.text[:100]}")
        elif r.status_code != 200:
            problems.append(f"{method} {path}: {r.status_code} {r.text[:100]}")
    assert not problems, f"{state}: {problems}"


def test_passing_again_restores_access(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path, "gate-restore")
    _failed(dev)
    assert world.client.get("/v1/device/config", headers=dev.headers).status_code == 403
    assert dev.attest()["ok"]
    assert world.client.get("/v1/device/config", headers=dev.headers).status_code == 200


def test_gating_off_and_fleet_without_golden(world: FleetWorld, tmp_path: Path) -> None:
    # a fleet without golden values is not gated (it cannot judge anybody)
    other = Dev(world, tmp_path / "o", "gate-other", fleet=world.other_fleet_id)
    assert world.client.get("/v1/device/config", headers=other.headers).status_code == 200
    dev = Dev(world, tmp_path / "d", "gate-off")
    url = f"/v1/fleets/{world.fleet_id}/attestation"
    assert world.client.get("/v1/device/config", headers=dev.headers).status_code == 403
    r = world.client.put(url, json={"gating": False}, headers=world.headers["admin"])
    assert r.status_code == 200 and r.json()["enforced"] is False, r.text
    try:
        assert world.client.get("/v1/device/config", headers=dev.headers).status_code == 200
    finally:
        world.client.put(url, json={"gating": True}, headers=world.headers["admin"])
    assert world.client.get("/v1/device/config", headers=dev.headers).status_code == 403


def test_operators_cannot_change_settings(world: FleetWorld) -> None:
    url = f"/v1/fleets/{world.fleet_id}/attestation"
    r = world.client.put(url, json={"gating": False}, headers=world.headers["operator"])
    assert r.status_code == 403, r.text
    r = world.client.get(url, headers=world.headers["stranger"])
    assert r.status_code in (403, 404), r.text
