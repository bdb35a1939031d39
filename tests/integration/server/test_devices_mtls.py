"""The device principal over real mTLS: uvicorn with HTTPS and the device CA as client CA.

The server certificate comes from the same fleet PKI code (trust.pki); the device's
certificate is issued by the server's device CA for a key the TLS stack can use (on a
device that is the TPM key through an OpenSSL provider; here a software key, because
Python's ssl module cannot sign with a TPM). The device row is written directly, then:
its certificate is its credential; revoking it refuses the next request; a certificate
of the same CA that was never enrolled is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion.server.devices.ca import DeviceCa
from bastion.server.devices.models import Device, DeviceStatus
from bastion.server.devices.service import revoke
from bastion.server.orgs.models import Fleet, Organisation
from bastion.server.tlsproto import uvicorn_config_kwargs
from bastion.trust import pki
from bastion.trust.keys import KeyAlgorithm, generate_private_key
from bastion.trust.signer import SoftwareSigner

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _device_cert(ca: DeviceCa, device_id: str, folder: Path) -> tuple[x509.Certificate, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    cert = ca.issue(csr, device_id=device_id, now=dt.datetime.now(dt.UTC))
    cert_path, key_path = folder / f"{device_id}.pem", folder / f"{device_id}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    return cert, cert_path, key_path


@pytest.fixture
def mtls(make_app, tmp_path: Path) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    device_ca = DeviceCa.load_or_create(tmp_path / "data" / "pki", now=now)
    server_key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    server_ca_key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    server_ca = pki.CertificateAuthority(
        SoftwareSigner(server_ca_key),
        pki.create_root_ca(SoftwareSigner(server_ca_key), "test server CA", now=now),
    )
    server_cert = pki.issue_server_certificate(
        server_ca, server_key.public_key(), ["localhost"], ["127.0.0.1"], now=now
    )
    (tmp_path / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.key").write_bytes(_pem_key(server_key))
    (tmp_path / "server-ca.pem").write_bytes(
        server_ca.certificate.public_bytes(serialization.Encoding.PEM)
    )
    port = _free_port()
    app = make_app(
        listen_port=port,
        tls_cert=tmp_path / "server.pem",
        tls_key=tmp_path / "server.key",
        client_ca=tmp_path / "data" / "pki" / "device-ca.pem",
    )
    ctx = app.state.ctx
    with ctx.db.session() as session:
        org = Organisation(name="mtls", created_at=now)
        session.add(org)
        session.flush()
        fleet = Fleet(org_id=org.id, name="f", created_at=now, config='{"target_release": "9"}')
        session.add(fleet)
        session.commit()
        ids = {"org": org.id, "fleet": fleet.id}
    device_id = secrets.token_hex(16)
    cert, cert_path, key_path = _device_cert(device_ca, device_id, tmp_path)
    with ctx.db.session() as session:
        session.add(
            Device(
                id=device_id,
                fleet_id=ids["fleet"],
                serial="mtls-1",
                status=DeviceStatus.ACTIVE,
                ek_hash="00" * 32,
                key_public=b"",
                cert_serial=f"{cert.serial_number:x}",
                cert_sha256=hashlib.sha256(
                    cert.public_bytes(serialization.Encoding.DER)
                ).hexdigest(),
                certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
                api_key_hash=secrets.token_hex(32),
                api_key_prefix="bst_dev_x",
                created_at=now,
            )
        )
        session.commit()
    stranger = _device_cert(device_ca, secrets.token_hex(16), tmp_path)
    kwargs = uvicorn_config_kwargs(ctx.settings)
    kwargs["log_level"] = "warning"
    server = uvicorn.Server(uvicorn.Config(app, **kwargs))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/v1/health", verify=_ctx(tmp_path, None), timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield {
            "url": url,
            "ctx": ctx,
            "ids": ids,
            "device_id": device_id,
            "device": (cert_path, key_path),
            "stranger": stranger[1:],
            "folder": tmp_path,
        }
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _ctx(folder: Path, pair: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(folder / "server-ca.pem"))
    if pair:
        context.load_cert_chain(str(pair[0]), str(pair[1]))
    return context


def test_device_certificate_is_the_credential(mtls) -> None:  # type: ignore[no-untyped-def]
    url, folder = mtls["url"], mtls["folder"]
    own = httpx.get(f"{url}/v1/device", verify=_ctx(folder, mtls["device"]))
    assert own.status_code == 200, own.text
    assert own.json()["id"] == mtls["device_id"]
    release = httpx.get(f"{url}/v1/device/target-release", verify=_ctx(folder, mtls["device"]))
    # reached over mTLS; the fleet config's free-form "target_release" is not a target
    assert release.status_code == 200 and release.json()["release"] is None
    # no certificate: anonymous; a certificate of the CA that was never enrolled: refused
    assert httpx.get(f"{url}/v1/device", verify=_ctx(folder, None)).status_code == 401
    assert httpx.get(f"{url}/v1/device", verify=_ctx(folder, mtls["stranger"])).status_code == 401
    ctx = mtls["ctx"]
    with ctx.db.session() as session:
        revoke(
            session,
            fleet_id=mtls["ids"]["fleet"],
            org_id=mtls["ids"]["org"],
            device_id=mtls["device_id"],
            actor="cli:test",
            now=ctx.clock.now(),
        )
    refused = httpx.get(f"{url}/v1/device", verify=_ctx(folder, mtls["device"]))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
