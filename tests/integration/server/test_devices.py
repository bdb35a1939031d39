"""Device principal and routes, operator device routes, revocation and the CRL.

Devices enrol with the pure-Python software TPM (fast) over HTTP; each case runs on
SQLite and PostgreSQL. The CRL and certificates are checked with ``openssl verify``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from tests.conftest import need_tool

from bastion.device.provision import DeviceIdentity
from bastion.errors import AuthError, RevokedError
from bastion.server.orgs.models import FleetEnvVar
from bastion.tpm.software import SoftwareTpm

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with shared_world(request.param, tmp_path_factory.mktemp("devices")) as w:
        with w.ctx.db.session() as session:
            session.add(FleetEnvVar(fleet_id=w.fleet_id, name="LOG_LEVEL", value="info"))
            session.add(FleetEnvVar(fleet_id=w.fleet_id, name="REGION", value="eu"))
            session.commit()
        yield w


class Dev:
    """An enrolled device: its TPM, identity and API-key headers."""

    def __init__(
        self, world: FleetWorld, folder: Path, serial: str, fleet_id: str | None = None
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.tpm = SoftwareTpm(folder / "tpm.state")
        key = world.create_key(fleet_id=fleet_id)
        self.identity: DeviceIdentity = world.enrol(self.tpm, key, serial=serial)
        self.headers = {"Authorization": f"Bearer {self.identity.api_key(self.tpm)}"}

    @property
    def id(self) -> str:
        return self.identity.device_id

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.identity.certificate_pem.encode())


def test_device_reads_and_writes_only_itself(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path / "a", "cam-a")
    other = Dev(world, tmp_path / "b", "cam-b")
    c = world.client
    own = c.get("/v1/device", headers=dev.headers)
    assert own.status_code == 200 and own.json()["id"] == dev.id
    assert (
        own.json()["last_seen_at"] is not None
        or c.get("/v1/device", headers=dev.headers).json()["last_seen_at"]
    )
    assert c.get("/v1/device", headers=other.headers).json()["id"] == other.id
    patched = c.patch(
        "/v1/device", json={"os_version": "bastion 1.0", "note": "lab"}, headers=dev.headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["os_version"] == "bastion 1.0" and patched.json()["note"] == "lab"
    for forbidden in (
        {"status": "active"},
        {"fleet_id": world.other_fleet_id},
        {"serial": "x"},
        {"id": other.id},
    ):
        refused = c.patch("/v1/device", json=forbidden, headers=dev.headers)
        assert refused.status_code == 422, refused.text
    assert c.get("/v1/device", headers=other.headers).json()["note"] is None
    # no device route takes an id; operator routes refuse devices
    for path in (
        f"/v1/fleets/{world.fleet_id}/devices",
        f"/v1/fleets/{world.fleet_id}/devices/{other.id}",
    ):
        assert c.get(path, headers=dev.headers).status_code == 403
    assert (
        c.post(
            f"/v1/fleets/{world.fleet_id}/devices/{other.id}/revoke", headers=dev.headers
        ).status_code
        == 403
    )
    assert c.get("/v1/device", headers=other.headers).json()["status"] == "active"


def test_config_env_overrides_and_target_release(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path / "a", "cam-c")
    c = world.client
    put = c.put(
        f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/env/LOG_LEVEL",
        json={"value": "debug"},
        headers=world.headers["operator"],
    )
    assert put.status_code == 204, put.text
    cfg = c.get("/v1/device/config", headers=dev.headers).json()
    assert cfg["env"] == {"LOG_LEVEL": "debug", "REGION": "eu"}
    assert cfg["overridden"] == ["LOG_LEVEL"] and cfg["config"]["mode"] == "prod"
    # the fleet config's free-form "target_release" string is no longer a target: only a
    # release the fleet published (server/releases) is
    assert c.get("/v1/device/target-release", headers=dev.headers).json()["release"] is None
    ext = {"url": "https://cdn.example.org/1.2.3.raucb", "length": 4096, "sha256": "ab" * 32}
    made = c.post(
        f"/v1/fleets/{world.fleet_id}/releases/external",
        json={**ext, "version": "1.2.3", "compatible": "cam"},
        headers=world.headers["operator"],
    )
    assert made.status_code == 201, made.text
    put_target = c.put(
        f"/v1/fleets/{world.fleet_id}/target-release",
        json={"release_id": made.json()["id"]},
        headers=world.headers["operator"],
    )
    assert put_target.status_code == 200, put_target.text
    target = c.get("/v1/device/target-release", headers=dev.headers).json()
    assert target["release"] == "1.2.3" and target["url"] == ext["url"]
    bad_name = c.put(
        f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/env/1BAD-NAME",
        json={"value": "x"},
        headers=world.headers["operator"],
    )
    assert bad_name.status_code == 422
    gone = c.delete(
        f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/env/LOG_LEVEL",
        headers=world.headers["operator"],
    )
    assert gone.status_code == 204
    assert c.get("/v1/device/config", headers=dev.headers).json()["env"]["LOG_LEVEL"] == "info"
    again = c.delete(
        f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/env/LOG_LEVEL",
        headers=world.headers["operator"],
    )
    assert again.status_code == 404


def test_logs_and_events(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path / "a", "cam-d")
    c = world.client
    logs = c.post("/v1/device/logs", json={"lines": ["boot ok", "agent up"]}, headers=dev.headers)
    assert logs.status_code == 200 and logs.json() == {"accepted": 2}
    events = c.post(
        "/v1/device/events",
        json={"events": [{"type": "update.done", "data": {"v": "1.2.3"}}]},
        headers=dev.headers,
    )
    assert events.status_code == 200 and events.json() == {"accepted": 1}
    assert c.post("/v1/device/logs", json={"lines": []}, headers=dev.headers).status_code == 422
    assert (
        c.post("/v1/device/logs", json={"lines": ["x"] * 1001}, headers=dev.headers).status_code
        == 422
    )
    assert (
        c.post("/v1/device/logs", json={"lines": ["x" * 20000]}, headers=dev.headers).status_code
        == 413
    )


def test_operator_list_show(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path / "a", "cam-e")
    c = world.client
    listed = c.get(f"/v1/fleets/{world.fleet_id}/devices", headers=world.headers["viewer"])
    assert listed.status_code == 200 and dev.id in {d["id"] for d in listed.json()}
    shown = c.get(
        f"/v1/fleets/{world.fleet_id}/devices/{dev.id}", headers=world.headers["viewer"]
    ).json()
    assert shown["certificate"] == dev.identity.certificate_pem and len(shown["ek_sha256"]) == 64
    # the device is not visible through another fleet, nor to another organisation
    assert (
        c.get(
            f"/v1/fleets/{world.other_fleet_id}/devices/{dev.id}", headers=world.headers["viewer"]
        ).status_code
        == 404
    )
    assert (
        c.get(f"/v1/fleets/{world.fleet_id}/devices", headers=world.headers["stranger"]).status_code
        == 404
    )


def _crl(world: FleetWorld) -> x509.CertificateRevocationList:
    response = world.client.get("/v1/crl")
    assert (
        response.status_code == 200 and response.headers["content-type"] == "application/pkix-crl"
    )
    return x509.load_der_x509_crl(response.content)


def test_revoke_refuses_next_request_and_lists_on_crl(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path / "a", "cam-f")
    c = world.client
    ctx = world.ctx
    with ctx.db.session(write=False) as session:
        assert (
            ctx.auth.resolve(session, None, dev.cert, ctx.clock.now()).id == dev.id
        )  # mTLS principal
    assert _crl(world).get_revoked_certificate_by_serial_number(dev.cert.serial_number) is None
    assert (
        c.post(
            f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/revoke", headers=world.headers["viewer"]
        ).status_code
        == 403
    )
    revoked = c.post(
        f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/revoke", headers=world.headers["operator"]
    )
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    for method, path in (
        ("GET", "/v1/device"),
        ("GET", "/v1/device/config"),
        ("GET", "/v1/device/target-release"),
    ):
        refused = c.request(method, path, headers=dev.headers)
        assert refused.status_code == 401, refused.text
    with ctx.db.session(write=False) as session, pytest.raises(RevokedError):
        ctx.auth.resolve(session, None, dev.cert, ctx.clock.now())
    crl = _crl(world)
    assert crl.get_revoked_certificate_by_serial_number(dev.cert.serial_number) is not None
    ca = x509.load_pem_x509_certificate(c.get("/v1/ca").content)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert "device.revoke" in world.audit_events()
    # revocation sticks: the revoked TPM's EK is denied until an admin lifts it; then
    # coming back needs a new provisioning key, and a fresh enrolment is a new device
    from bastion.errors import VerificationError
    from bastion.server.provisioning.policy import ek_hash

    with pytest.raises(VerificationError, match="deny-list"):
        Dev(world, tmp_path / "a", "cam-f")
    ek = ek_hash(dev.tpm.ek_public())
    lift = f"/v1/fleets/{world.fleet_id}/ek-denylist/{ek}"
    assert c.delete(lift, headers=world.headers["operator"]).status_code == 403
    assert c.delete(lift, headers=world.headers["admin"]).status_code == 204
    again = Dev(world, tmp_path / "a", "cam-f")
    assert again.id != dev.id
    assert c.get("/v1/device", headers=dev.headers).status_code == 401


def test_delete_refuses_next_request_and_keeps_crl_entry(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path / "a", "cam-g")
    c = world.client
    path = f"/v1/fleets/{world.fleet_id}/devices/{dev.id}"
    assert c.delete(path, headers=world.headers["operator"]).status_code == 403
    assert c.delete(path, headers=world.headers["admin"]).status_code == 204
    assert c.get("/v1/device", headers=dev.headers).status_code == 401
    with world.ctx.db.session(write=False) as session, pytest.raises(AuthError):
        world.ctx.auth.resolve(session, None, dev.cert, world.ctx.clock.now())
    assert _crl(world).get_revoked_certificate_by_serial_number(dev.cert.serial_number) is not None
    assert c.delete(path, headers=world.headers["admin"]).status_code == 404


@pytest.mark.interop
def test_openssl_verify_with_crl(world: FleetWorld, tmp_path: Path) -> None:
    openssl = need_tool("openssl")
    dev = Dev(world, tmp_path / "a", "cam-h")
    c = world.client
    (tmp_path / "ca.pem").write_bytes(c.get("/v1/ca").content)
    (tmp_path / "dev.pem").write_text(dev.identity.certificate_pem)

    def verify() -> subprocess.CompletedProcess[str]:
        (tmp_path / "crl.der").write_bytes(c.get("/v1/crl").content)
        subprocess.run(
            [
                openssl,
                "crl",
                "-inform",
                "DER",
                "-in",
                str(tmp_path / "crl.der"),
                "-out",
                str(tmp_path / "crl.pem"),
            ],
            check=True,
        )
        return subprocess.run(
            [
                openssl,
                "verify",
                "-purpose",
                "sslclient",
                "-CAfile",
                str(tmp_path / "ca.pem"),
                "-crl_check",
                "-CRLfile",
                str(tmp_path / "crl.pem"),
                str(tmp_path / "dev.pem"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    ok = verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    c.post(f"/v1/fleets/{world.fleet_id}/devices/{dev.id}/revoke", headers=world.headers["admin"])
    refused = verify()
    assert refused.returncode != 0 and "revoked" in (refused.stdout + refused.stderr)


def test_deleting_a_fleet_revokes_its_devices_certificates(
    world: FleetWorld, tmp_path: Path
) -> None:
    owner = world.headers["owner"]
    made = world.client.post(
        f"/v1/orgs/{world.org_id}/fleets",
        json={"name": "doomed", "ek_policy": "any"},
        headers=owner,
    )
    assert made.status_code == 201, made.text
    fleet = made.json()
    assert fleet["ek_policy"] == "any" and "DEVELOPMENT" in fleet["warning"]
    for path in ("/v1/fleets", f"/v1/orgs/{world.org_id}/fleets", f"/v1/fleets/{fleet['id']}"):
        listed = world.client.get(path, headers=owner).json()
        rows = listed if isinstance(listed, list) else [listed]
        for row in rows:  # every listing carries the policy, and the warning when "any"
            assert ("DEVELOPMENT" in (row["warning"] or "")) is (row["ek_policy"] == "any")
    devs = []
    for serial in ("d-1", "d-2"):
        tpm = SoftwareTpm(tmp_path / serial / "tpm.state")
        key = world.create_key("owner", fleet_id=fleet["id"])
        identity = world.enrol(tpm, key, serial=serial)
        devs.append((identity, world.device_headers(identity, tpm)))
    gone = world.client.delete(f"/v1/fleets/{fleet['id']}", headers=owner)
    assert gone.status_code == 204, gone.text
    crl = _crl(world)
    for identity, headers in devs:
        cert = x509.load_pem_x509_certificate(identity.certificate_pem.encode())
        assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
        assert world.client.get("/v1/device", headers=headers).status_code == 401


def test_every_device_request_refreshes_last_seen(world: FleetWorld, tmp_path: Path) -> None:
    dev = Dev(world, tmp_path / "a", "cam-seen")
    clock = world.ctx.clock

    def last_seen() -> str | None:
        shown = world.client.get(
            f"/v1/fleets/{world.fleet_id}/devices/{dev.id}", headers=world.headers["viewer"]
        )
        value: str | None = shown.json()["last_seen_at"]
        return value

    assert last_seen() is None
    for method, path in (
        ("GET", "/v1/device/config"),
        ("GET", "/v1/device/target-release"),
        ("GET", "/v1/ca"),
        ("GET", "/v1/crl"),
    ):
        clock.advance(61)
        before = clock.now()
        response = world.client.request(method, path, headers=dev.headers)
        assert response.status_code == 200, (path, response.text)
        # on PostgreSQL the answer cache's writer stores it within a second (ADR 0045)
        deadline = time.monotonic() + 5
        while True:
            seen = last_seen()
            if (
                seen is not None
                and dt.datetime.fromisoformat(seen).replace(tzinfo=dt.UTC) >= before
            ):
                break
            assert time.monotonic() < deadline, (path, seen, before)
            time.sleep(0.05)
