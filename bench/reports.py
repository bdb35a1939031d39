"""Benchmark: server CPU per signed device update report, at 10,000 reporting devices.

A fleet of N devices (default 10,000; rows written straight into the database, each
with its own ECDSA P-256 identity key as a TPM2B_PUBLIC and its own device API key)
runs one rollout (a 10 % canary, then the rest). Every device asks for a report nonce
and posts a report signed with its identity key (device/update/report.py; the signing is
done before the clock starts and is not counted). Server work per report: authenticate
the API key, refresh last-seen, parse the signed report, verify the TPM signature with
the enrolled key, consume the nonce, store the report, update the device's rollout row,
judge the open wave (advance / pause / complete), and write the audit entry.

The reference, measured in the same run on the same server: ``GET /v1/device`` (an
authenticated device request that reads one row), so the ratio says how many plain
device requests one report costs. Requests go in-process through the ASGI app
(Starlette's TestClient), so HTTP parsing over a socket is not counted.

Usage: .venv/bin/python bench/reports.py [--devices N] [--database-url URL]
Other work on the machine makes absolute figures noisy; the ratio is what to compare.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from fastapi.testclient import TestClient
from sqlalchemy import insert

from bastion.device.update.report import ReportFields, build_report
from bastion.formats.tpm2 import Alg, Signature
from bastion.formats.update_report import UpdateResult
from bastion.server.app import create_app
from bastion.server.auth import tokens
from bastion.server.devices.models import Device
from bastion.server.orgs.models import Fleet, FleetMember, Organisation, OrgMember
from bastion.server.provisioning.policy import DEVICE_KEY_PREFIX
from bastion.server.settings import ServerSettings
from bastion.server.users import service as users
from bastion.tpm.base import TpmKey
from bastion.tpm.external import ecc_public

CHEAP = {"argon2_time_cost": 1, "argon2_memory_kib": 8, "argon2_parallelism": 1,
         "rate_per_second": 1e9, "rate_burst": 10**9}  # fmt: skip


class KeyTpm:
    """The device side, without a TPM: signs like TPM2_Sign (ECDSA P-256 over a digest)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, ec.EllipticCurvePrivateKey] = {}

    def new_key(self) -> TpmKey:
        key = ec.generate_private_key(ec.SECP256R1())
        public = ecc_public(key.public_key()).to_bytes()
        self.keys[public] = key
        return TpmKey(public, b"", b"")

    def sign(self, key: TpmKey, digest: bytes) -> bytes:
        der = self.keys[key.public].sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s = utils.decode_dss_signature(der)
        return Signature(
            Alg.ECDSA, Alg.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big")
        ).to_bytes()


def _fleet(app: Any, n: int, tpm: KeyTpm) -> tuple[str, str, list[tuple[str, str, TpmKey]]]:
    """An org, a fleet, an operator (token) and ``n`` devices: (fleet, operator token, devices)."""
    ctx = app.state.ctx
    now = ctx.clock.now()
    devices: list[tuple[str, str, TpmKey]] = []
    rows = []
    with ctx.db.session() as session:
        user = users.create_user(ctx, session, "op@example.org", "correct horse battery", "bench")
        org = Organisation(name="bench", created_at=now)
        session.add(org)
        session.flush()
        fleet = Fleet(org_id=org.id, name="fleet", created_at=now, ek_policy="any")
        session.add(fleet)
        session.flush()
        session.add(OrgMember(org_id=org.id, user_id=user.id, role="member"))
        session.add(FleetMember(fleet_id=fleet.id, user_id=user.id, role="operator"))
        for i in range(n):
            key = tpm.new_key()
            token, digest = tokens.new_token(DEVICE_KEY_PREFIX)
            device_id = secrets.token_hex(16)
            fp = hashlib.sha256(device_id.encode()).hexdigest()
            rows.append({
                "id": device_id, "fleet_id": fleet.id, "serial": f"sn-{i}", "status": "active",
                "ek_hash": fp, "key_public": key.public, "cert_serial": str(i), "cert_sha256": fp,
                "certificate": "-", "api_key_hash": digest, "api_key_prefix": token[:12],
                "created_at": now,
            })  # fmt: skip
            devices.append((device_id, token, key))
        session.execute(insert(Device), rows)
        session.commit()
        fleet_id = fleet.id
    login = TestClient(app).post(
        "/v1/auth/login", json={"email": "op@example.org", "password": "correct horse battery"}
    )
    return fleet_id, login.json()["token"], devices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        settings = ServerSettings(data_dir=Path(tmp), database_url=args.database_url, **CHEAP)
        app = create_app(settings)
        try:
            return _run(app, args.devices)
        finally:
            app.state.ctx.db.dispose()


def _run(app: Any, n: int) -> int:
    tpm = KeyTpm()
    t0 = time.perf_counter()
    fleet, op_token, devices = _fleet(app, n, tpm)
    print(f"{n} devices written in {time.perf_counter() - t0:.1f} s")
    client = TestClient(app)
    op = {"Authorization": f"Bearer {op_token}"}
    release = client.post(
        f"/v1/fleets/{fleet}/releases/external",
        json={"url": "https://cdn.example.org/2.0.raucb", "length": 1 << 30,
              "sha256": "ab" * 32, "version": "2.0", "compatible": "bench"},
        headers=op,
    ).json()["id"]  # fmt: skip
    t0 = time.perf_counter()
    # a small fleet's 10 % canary can select no device (the hash of a fresh rollout id
    # decides): the server refuses that start, so start again with a new id
    for _ in range(50):
        started = client.post(
            f"/v1/fleets/{fleet}/rollouts",
            json={"release_id": release, "waves": [
                {"name": "canary", "canary": True, "percent": 10, "failure_percent": 5},
                {"name": "rest", "percent": 90, "failure_percent": 5}]},
            headers=op,
        )  # fmt: skip
        if "canary wave selects no device" not in started.text:
            break
    assert started.status_code == 201, started.text
    print(f"rollout started (assignment of {n} devices) in {time.perf_counter() - t0:.2f} s")
    waves = {w["position"]: w["assigned"] for w in started.json()["waves"]}
    # canary devices first, so the rollout advances and completes as it would in a fleet
    order = sorted(devices, key=lambda d: 0 if _in_canary(client, d) else 1)

    plain_cpu = 0.0
    for _device_id, token, _key in order[: min(n, 2000)]:
        c0 = time.process_time()
        assert (
            client.get("/v1/device", headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        )
        plain_cpu += time.process_time() - c0
    plain_ms = 1000 * plain_cpu / min(n, 2000)

    cpu = 0.0
    wall = 0.0
    for device_id, token, key in order:
        headers = {"Authorization": f"Bearer {token}"}
        c0, w0 = time.process_time(), time.perf_counter()
        answer = client.post("/v1/device/update/report-nonce", headers=headers)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        nonce = base64.b64decode(answer.json()["nonce"])
        fields = ReportFields(device_id, "2.0", "b", 2, UpdateResult.COMMITTED)  # clock: 0
        signed = build_report(tpm, key, fields, nonce)  # type: ignore[arg-type]
        body = {"report": base64.b64encode(signed).decode()}
        c0, w0 = time.process_time(), time.perf_counter()
        sent = client.post("/v1/device/update/report", json=body, headers=headers)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        assert sent.status_code == 200, sent.text
    status = client.get(f"/v1/fleets/{fleet}/rollouts", headers=op).json()[0]["state"]
    per_report = 1000 * cpu / n
    print(f"waves: {waves}; rollout state after every report: {status}")
    print(f"server CPU per report (nonce + signed report): {per_report:.2f} ms")
    print(f"reports/s (one client, in-process): {n / wall:.0f}")
    print(f"reference GET /v1/device: {plain_ms:.2f} ms CPU")
    print(f"ratio report / plain device request: {per_report / plain_ms:.1f}")
    return 0 if status == "completed" else 1


def _in_canary(client: TestClient, device: tuple[str, str, TpmKey]) -> bool:
    got = client.get("/v1/device/target-release", headers={"Authorization": f"Bearer {device[1]}"})
    return bool(got.json()["release"])


if __name__ == "__main__":
    raise SystemExit(main())
