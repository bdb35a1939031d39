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
