"""Helpers for the device-side server tests: orgs, fleets, members, provisioning keys, TPMs.

Organisations, fleets and memberships are written straight into the database (the
orgs routes belong to the core); everything under test goes over HTTP.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from bastion.device.provision import DeviceIdentity, provision
from bastion.io.http import HttpClient
from bastion.server.auth import tokens
from bastion.server.orgs.models import Fleet, FleetMember, Organisation, OrgMember
from bastion.server.users.models import UserToken
from bastion.tpm.base import Tpm

ROLES = ("owner", "admin", "operator", "viewer")


@dataclass
class FleetWorld:
    """One organisation with a fleet, a user per role, and a stranger in another org.

    Both fleets start as development fleets (EK policy ``any``) so the software TPM
    can enrol; tests of the EK policy set it themselves."""

    client: TestClient
    org_id: str
    fleet_id: str
    other_fleet_id: str
    headers: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def ctx(self) -> Any:
        return self.client.app.state.ctx  # type: ignore[attr-defined]

    def create_key(self, role: str = "admin", fleet_id: str | None = None, **body: Any) -> str:
        fleet = fleet_id or self.fleet_id
        response = self.client.post(
            f"/v1/fleets/{fleet}/provisioning-keys",
            json={"name": "batch-1", **body},
            headers=self.headers[role],
        )
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    def enrol(self, tpm: Tpm, key: str, serial: str = "serial-0001", **kw: Any) -> DeviceIdentity:
        return provision(
            tpm, HttpClient.over(self.client), provisioning_key=key, serial=serial, **kw
        )

    def device_headers(self, identity: DeviceIdentity, tpm: Tpm) -> dict[str, str]:
        return {"Authorization": f"Bearer {identity.api_key(tpm)}"}

    def audit_events(self) -> list[str]:
        from sqlalchemy import select

        from bastion.server.audit.models import AuditEntry

        with self.ctx.db.session(write=False) as session:
            return list(
                session.execute(select(AuditEntry.event).order_by(AuditEntry.seq)).scalars()
            )


def _login(client: TestClient, email: str) -> dict[str, str]:
    response = client.post(
        "/v1/auth/login", json={"email": email, "password": "correct horse battery"}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def build_world(api: Any) -> FleetWorld:
    """Org "acme" with fleet "cams" (+ a second fleet), users per role, and org "other"."""
    from bastion.server.users import service as users

    ctx = api.ctx
    now = ctx.clock.now()
    ids: dict[str, str] = {}
    with ctx.db.session() as session:
        for role in (*ROLES, "stranger"):
            ids[role] = users.create_user(
                ctx, session, f"{role}@example.com", "correct horse battery", "cli:test"
            ).id
        org = Organisation(name="acme", created_at=now)
        other = Organisation(name="other", created_at=now)
        session.add_all([org, other])
        session.flush()
        fleet = Fleet(
            org_id=org.id,
            name="cams",
            created_at=now,
            config='{"target_release": "1.2.3", "mode": "prod"}',
            ek_policy="any",  # development fleets: the software TPM enrols (test_enrollment
        )  # turns "cams" certified)
        fleet2 = Fleet(org_id=org.id, name="gateways", created_at=now, ek_policy="any")
        session.add_all([fleet, fleet2])
        session.flush()
        session.add(OrgMember(org_id=org.id, user_id=ids["owner"], role="owner"))
        for role in ("admin", "operator", "viewer"):
            session.add(OrgMember(org_id=org.id, user_id=ids[role], role="member"))
            session.add(FleetMember(fleet_id=fleet.id, user_id=ids[role], role=role))
            session.add(FleetMember(fleet_id=fleet2.id, user_id=ids[role], role=role))
        session.add(OrgMember(org_id=other.id, user_id=ids["stranger"], role="owner"))
        # an expired session token of the fleet's admin
        token, digest = tokens.new_token(tokens.SESSION_PREFIX)
        session.add(
            UserToken(
                user_id=ids["admin"],
                kind="session",
                name="old",
                token_hash=digest,
                hint=tokens.token_hint(token),
                scopes="admin read write",
                created_at=now - dt.timedelta(days=2),
                expires_at=now - dt.timedelta(days=1),
                two_factor=False,
            )
        )
        session.commit()
        world = FleetWorld(api.client, org.id, fleet.id, fleet2.id)
    for role in (*ROLES, "stranger"):
        world.headers[role] = _login(api.client, f"{role}@example.com")
    world.headers["expired"] = {"Authorization": f"Bearer {token}"}
    world.headers["anonymous"] = {}
    return world


@contextmanager
def tss_tpm(folder: Path) -> Iterator[Tpm]:
    """A fresh TPM: tpm2-pytss over a private swtpm, stopped by PID afterwards."""
    from bastion.tpm.swtpm import Swtpm
    from bastion.tpm.tss import TssTpm

    with Swtpm.start(folder) as sw:
        tpm = TssTpm(sw.uri)
        try:
            yield tpm
        finally:
            tpm.close()


def manufacture_swtpm(state: Path, ca_dir: Path) -> Path:
    """Make ``state`` a swtpm with an EK certificate in NV, as a TPM maker would:
    ``swtpm_setup --create-ek-cert`` signed by swtpm's local CA kept in ``ca_dir``
    (created on first use, shared by later calls). Returns the CA certificate (PEM)
    that issued the EK certificates: the one a fleet's trust store needs."""
    import subprocess

    ca_dir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    localca = ca_dir / "swtpm-localca.conf"
    localca.write_text(
        f"statedir = {ca_dir}\n"
        f"signingkey = {ca_dir / 'signkey.pem'}\n"
        f"issuercert = {ca_dir / 'issuercert.pem'}\n"
        f"certserial = {ca_dir / 'certserial'}\n"
    )
    options = ca_dir / "swtpm-localca.options"
    options.write_text("--platform-manufacturer bastion-tests\n--platform-model swtpm\n")
    setup = ca_dir / "swtpm_setup.conf"
    setup.write_text(
        "create_certs_tool = swtpm_localca\n"
        f"create_certs_tool_config = {localca}\n"
        f"create_certs_tool_options = {options}\n"
        "active_pcr_banks = sha256\n"
    )
    subprocess.run(
        [
            "swtpm_setup",
            "--tpm2",
            "--tpm-state",
            str(state),
            "--create-ek-cert",
            "--config",
            str(setup),
            "--overwrite",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return ca_dir / "issuercert.pem"


@contextmanager
def certified_tss_tpm(folder: Path, ca_dir: Path) -> Iterator[Tpm]:
    """A fresh swtpm with a maker's EK certificate (see :func:`manufacture_swtpm`)."""
    manufacture_swtpm(folder, ca_dir)
    with tss_tpm(folder) as tpm:
        yield tpm


def set_ek_policy(world: FleetWorld, fleet_id: str, policy: str) -> None:
    response = world.client.put(
        f"/v1/fleets/{fleet_id}/ek-policy",
        json={"ek_policy": policy},
        headers=world.headers["owner"],
    )
    assert response.status_code == 200, response.text


def trust_ek_ca(world: FleetWorld, fleet_id: str, pem: bytes) -> dict[str, Any]:
    response = world.client.post(
        f"/v1/fleets/{fleet_id}/ek-cas",
        json={"certificate": pem.decode()},
        headers=world.headers["admin"],
    )
    assert response.status_code in (201, 409), response.text
    return dict(response.json())


def revoke_or_delete(world: FleetWorld, device_id: str, how: str) -> None:
    """Revoke (an operator) or delete (an admin) a device of the world's fleet."""
    where = f"/v1/fleets/{world.fleet_id}/devices/{device_id}"
    if how == "revoke":
        r = world.client.post(f"{where}/revoke", headers=world.headers["operator"])
        assert r.status_code == 200, r.text
    else:
        assert how == "delete", how
        r = world.client.delete(where, headers=world.headers["admin"])
        assert r.status_code == 204, r.text


def forget_devices(world: FleetWorld) -> None:
    """Delete every device row and EK denial (tests that enrol one TPM again and again)."""
    from sqlalchemy import delete

    from bastion.server.devices.models import Device
    from bastion.server.ektrust.models import DeniedEk

    with world.ctx.db.session() as session:
        session.execute(delete(Device))
        session.execute(delete(DeniedEk))
        session.commit()


@contextmanager
def shared_world(backend: str, folder: Path, **settings: Any) -> Iterator[FleetWorld]:
    """A whole app + world for one test module, on its own SQLite file or PostgreSQL
    database (created here, dropped afterwards), so module tests share the set-up cost
    and no other module's per-test wipe touches it; ``settings`` override server settings."""
    import secrets

    import pytest

    from bastion.io.clock import FixedClock
    from bastion.server.app import create_app
    from bastion.server.settings import ServerSettings

    from .conftest import CHEAP, IN_CI, PG_ADMIN_URL, Api, _pg_connect

    pg_name = None
    if backend == "sqlite":
        url = f"sqlite:///{folder / 'bastion.db'}"
    else:
        try:
            admin = _pg_connect()
        except Exception as exc:
            if IN_CI:
                pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}", pytrace=False)
            pytest.skip(
                f"PostgreSQL at {PG_ADMIN_URL} is unreachable (Debian package 'postgresql')"
            )
        pg_name = f"bastion_dev_{secrets.token_hex(6)}"
        with admin:
            admin.execute(f'CREATE DATABASE "{pg_name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}"
    clock = FixedClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    app = create_app(
        ServerSettings(data_dir=folder / "data", database_url=url, **{**CHEAP, **settings}),
        clock=clock,
    )
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield build_world(Api(client))
    finally:
        app.state.ctx.db.dispose()
        if pg_name is not None:
            with _pg_connect() as admin2:
                admin2.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


@contextmanager
def serve_on_loopback(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port (a thread); yields its URL once
    ``/v1/health`` answers, and stops the server afterwards."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        server.should_exit = True
        thread.join(timeout=10)
        raise RuntimeError(f"the test server on {url} never answered /v1/health")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
