"""HTTPS with optional client certificates: the verified peer certificate reaches the app.

A real uvicorn on a free loopback port, configured by ``uvicorn_config_kwargs`` (what
``bastion server`` uses), with certificates made here with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import APIRouter, Request

from bastion.server.auth.deps import peer_certificate
from bastion.server.tlsproto import uvicorn_config_kwargs

pytestmark = pytest.mark.integration


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer_name: str, issuer_key, *, ca: bool, san: bool = False):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert, key=None) -> tuple[Path, Path | None]:
    cert_path = folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = None
    if key is not None:
        key_path = folder / f"{name}.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for ca_name in ("server-ca", "device-ca", "rogue-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(ca_name, key, ca_name, key, ca=True)
        out[ca_name], _ = _write(tmp_path, ca_name, cert)
        out[f"{ca_name}-key"] = key  # type: ignore[assignment]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("127.0.0.1", server_key, "server-ca", out["server-ca-key"], ca=False, san=True)
    out["server"], out["server-key"] = _write(tmp_path, "server", server, server_key)
    for who, ca in (("device", "device-ca"), ("rogue", "rogue-ca")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"{who}-cert", key, ca, out[f"{ca}-key"], ca=False)
        out[who], out[f"{who}-key"] = _write(tmp_path, who, cert, key)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def https_server(make_app, pki) -> Iterator[str]:
    port = _free_port()
    app = make_app(
        listen_port=port,
        tls_cert=pki["server"],
        tls_key=pki["server-key"],
        client_ca=pki["device-ca"],
    )
    router = APIRouter()

    @router.get("/v1/test/peer")
    def peer(request: Request) -> dict[str, str | None]:
        cert = peer_certificate(request)
        return {"cn": cert.subject.rfc4514_string() if cert else None}

    app.include_router(router)
    kwargs = uvicorn_config_kwargs(app.state.ctx.settings)
    kwargs["log_level"] = "warning"
    server = uvicorn.Server(uvicorn.Config(app, **kwargs))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(pki["server-ca"]))
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/v1/health", verify=context, timeout=10)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _context(pki, who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["server-ca"]))
    if who:
        context.load_cert_chain(str(pki[who]), str(pki[f"{who}-key"]))
    return context


def test_client_certificate_reaches_the_app(https_server, pki) -> None:
    response = httpx.get(f"{https_server}/v1/test/peer", verify=_context(pki, "device"), timeout=30)
    assert response.status_code == 200
    assert response.json() == {"cn": "CN=device-cert"}


def test_no_client_certificate_is_allowed(https_server, pki) -> None:
    response = httpx.get(f"{https_server}/v1/test/peer", verify=_context(pki, None), timeout=30)
    assert response.json() == {"cn": None}
    assert (
        httpx.get(f"{https_server}/v1/health", verify=_context(pki, None), timeout=30).status_code
        == 200
    )


def test_certificate_from_another_ca_is_refused_by_tls(https_server, pki) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(
            f"{https_server}/v1/test/peer", verify=_context(pki, "rogue"), timeout=30
        ).raise_for_status()


def test_server_certificate_is_checked_by_clients(https_server) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{https_server}/v1/health")  # system store does not trust the test CA
