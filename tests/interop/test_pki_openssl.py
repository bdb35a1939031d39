"""The fleet PKI against `openssl verify`, `openssl req` and `openssl x509 -req`."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.conftest import need_tool

from bastion.errors import RevokedError
from bastion.trust import pki
from bastion.trust.keys import private_key_to_pem
from bastion.trust.pki import CertificateAuthority, RevokedEntry
from bastion.trust.signer import SoftwareSigner

pytestmark = pytest.mark.interop

PEM = serialization.Encoding.PEM


def _openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_tool("openssl"), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def ca_dir(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, CertificateAuthority, CertificateAuthority]:
    folder = tmp_path_factory.mktemp("pki")
    rs = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
    root = CertificateAuthority(rs, pki.create_root_ca(rs, "Interop Root", organization="Acme"))
    fk = ec.generate_private_key(ec.SECP256R1())
    fs = SoftwareSigner(fk)
    fleet = CertificateAuthority(
        fs, pki.create_intermediate_ca(root, fs.public_key(), "Interop Fleet")
    )
    (folder / "root.pem").write_bytes(root.certificate.public_bytes(PEM))
    (folder / "fleet.pem").write_bytes(fleet.certificate.public_bytes(PEM))
    (folder / "fleet.key").write_bytes(private_key_to_pem(fk))
    return folder, root, fleet


def _openssl_csr(folder: Path, name: str) -> bytes:
    res = _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-subj",
        f"/CN={name}-from-openssl",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    assert res.returncode == 0, res.stderr
    return (folder / f"{name}.csr").read_bytes()


def test_openssl_verifies_device_chain_and_crl(ca_dir) -> None:
    folder, _root, fleet = ca_dir
    good = pki.issue_device_certificate(fleet, _openssl_csr(folder, "good"), "good-1")
    bad = pki.issue_device_certificate(fleet, _openssl_csr(folder, "bad"), "bad-1")
    (folder / "good.pem").write_bytes(good.public_bytes(PEM))
    (folder / "bad.pem").write_bytes(bad.public_bytes(PEM))
    now = dt.datetime.now(dt.UTC)
    crl = pki.build_crl(
        fleet, [RevokedEntry(bad.serial_number, now, "key_compromise")], crl_number=1
    )
    (folder / "crl.pem").write_bytes(crl.public_bytes(PEM))

    base = ["verify", "-CAfile", "root.pem", "-untrusted", "fleet.pem"]
    for leaf in ("good.pem", "bad.pem"):
        res = _openssl(*base, leaf, cwd=folder)
        assert res.returncode == 0 and ": OK" in res.stdout, res.stdout + res.stderr
        res = _openssl(*base, "-purpose", "sslclient", leaf, cwd=folder)
        assert res.returncode == 0, res.stderr
        res = _openssl(*base, "-purpose", "sslserver", leaf, cwd=folder)
        assert res.returncode != 0
    crl_args = [*base, "-crl_check", "-CRLfile", "crl.pem"]
    res = _openssl(*crl_args, "good.pem", cwd=folder)
    assert res.returncode == 0, res.stdout + res.stderr
    res = _openssl(*crl_args, "bad.pem", cwd=folder)
    assert res.returncode != 0
    assert "revoked" in (res.stdout + res.stderr).lower()
    text = _openssl("crl", "-in", "crl.pem", "-noout", "-text", cwd=folder).stdout
    assert "X509v3 CRL Number" in text and "Next Update" in text and "Key Compromise" in text
    # the same verdicts from bastion
    pki.verify_chain(good, roots=[_root.certificate], intermediates=[fleet.certificate], crls=[crl])
    with pytest.raises(RevokedError):
        pki.verify_chain(
            bad, roots=[_root.certificate], intermediates=[fleet.certificate], crls=[crl]
        )


def test_openssl_verifies_server_certificate(ca_dir) -> None:
    folder, _root, fleet = ca_dir
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue_server_certificate(
        fleet, key.public_key(), ["fleet.example.test"], ["192.0.2.1"]
    )
    (folder / "server.pem").write_bytes(cert.public_bytes(PEM))
    base = ["verify", "-CAfile", "root.pem", "-untrusted", "fleet.pem", "-purpose", "sslserver"]
    assert (
        _openssl(
            *base, "-verify_hostname", "fleet.example.test", "server.pem", cwd=folder
        ).returncode
        == 0
    )
    assert _openssl(*base, "-verify_ip", "192.0.2.1", "server.pem", cwd=folder).returncode == 0
    assert (
        _openssl(
            *base, "-verify_hostname", "evil.example.test", "server.pem", cwd=folder
        ).returncode
        != 0
    )


def test_bastion_verifies_openssl_issued_device_cert(ca_dir) -> None:
    folder, root, fleet = ca_dir
    _openssl_csr(folder, "ossl")
    (folder / "ext.cnf").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n"
        "subjectAltName=URI:urn:bastion:device:ossl-1\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    res = _openssl(
        "x509",
        "-req",
        "-in",
        "ossl.csr",
        "-CA",
        "fleet.pem",
        "-CAkey",
        "fleet.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-sha256",
        "-extfile",
        "ext.cnf",
        "-out",
        "ossl.pem",
        cwd=folder,
    )
    assert res.returncode == 0, res.stderr
    cert = x509.load_pem_x509_certificate((folder / "ossl.pem").read_bytes())
    chain = pki.verify_chain(cert, roots=[root.certificate], intermediates=[fleet.certificate])
    assert pki.device_id_of(chain.leaf) == "ossl-1"


@pytest.mark.parametrize("client", ["device", "server cert as client"])
def test_mutual_tls_handshake_with_bastion_certificates(ca_dir, client: str) -> None:
    """A real TLS 1.3 handshake (Python's ssl = OpenSSL) with a bastion server cert and a
    bastion device cert, both required and verified against the fleet root; a server
    certificate offered as a client certificate is refused (wrong usage)."""
    import socket
    import ssl
    import threading

    folder, _root, fleet = ca_dir
    chain_pem = fleet.certificate.public_bytes(PEM)
    skey = ec.generate_private_key(ec.SECP256R1())
    scert = pki.issue_server_certificate(fleet, skey.public_key(), ["localhost"], ["127.0.0.1"])
    (folder / "tls-server.pem").write_bytes(scert.public_bytes(PEM) + chain_pem)
    (folder / "tls-server.key").write_bytes(private_key_to_pem(skey))
    dkey = ec.generate_private_key(ec.SECP256R1())
    from cryptography import x509 as _x509
    from cryptography.hazmat.primitives import hashes

    csr = (
        _x509.CertificateSigningRequestBuilder()
        .subject_name(_x509.Name([]))
        .sign(dkey, hashes.SHA256())
    )
    dcert = pki.issue_device_certificate(fleet, csr.public_bytes(PEM), "tls-dev-1")
    (folder / "tls-device.pem").write_bytes(dcert.public_bytes(PEM) + chain_pem)
    (folder / "tls-device.key").write_bytes(private_key_to_pem(dkey))

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(folder / "tls-server.pem", folder / "tls-server.key")
    server_ctx.load_verify_locations(folder / "root.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(folder / "root.pem"))
    if client == "device":
        client_ctx.load_cert_chain(folder / "tls-device.pem", folder / "tls-device.key")
    else:
        client_ctx.load_cert_chain(folder / "tls-server.pem", folder / "tls-server.key")

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                tls.sendall(b"hello device")
        except ssl.SSLError as exc:
            seen["error"] = exc
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            if client == "device":
                assert tls.recv(100) == b"hello device"
            else:  # the server refuses the handshake: an alert or a closed socket
                try:
                    data = tls.recv(100)
                except (ssl.SSLError, ConnectionError):
                    data = b""
                assert data == b""
    finally:
        thread.join(timeout=10)
        listener.close()
    if client != "device":
        assert "unsuitable certificate purpose" in str(seen["error"])
        return
    peer = seen["peer"]
    assert isinstance(peer, dict)
    assert ("URI", "urn:bastion:device:tls-dev-1") in peer["subjectAltName"]
