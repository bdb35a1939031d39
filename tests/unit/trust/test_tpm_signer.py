"""tpm: keys on both TPM backends: signing, envelopes, a TPM-held CA, module signatures."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.errors import ConfigError, FormatError, SignatureError, TpmError
from bastion.formats.modsig import sign_module, verify_module
from bastion.tpm.base import TpmKey
from bastion.trust import pki
from bastion.trust.envelope import sign_envelope, verify_envelope
from bastion.trust.keys import (
    KeyUri,
    create_tpm_key,
    open_signer,
    tpm_key_from_bytes,
    tpm_key_to_bytes,
)
from bastion.trust.signer import SignatureScheme, TpmSigner, Verifier


@pytest.mark.parametrize("alg", ["ecdsa-p256", "rsa-2048"])
def test_tpm_key_signs_and_verifies(tpm_rig, tmp_path: Path, alg: str) -> None:
    signer = create_tpm_key(tpm_rig.tpm, alg, tmp_path / "k.tpmkey")
    expected = (
        SignatureScheme.ECDSA_P256_SHA256
        if alg == "ecdsa-p256"
        else SignatureScheme.RSA_PKCS1V15_SHA256
    )
    assert signer.scheme is expected
    sig = signer.sign(b"hello tpm")
    verifier = Verifier.of(signer.public_key(), signer.scheme)
    verifier.verify(b"hello tpm", sig)
    with pytest.raises(SignatureError):
        verifier.verify(b"hello tpm!", sig)
    env = sign_envelope("t/x", b"payload", [signer])
    assert verify_envelope(env, [verifier], payload_type="t/x") == b"payload"


def test_tpm_uri_opens_key(tpm_rig, tmp_path: Path) -> None:
    keyfile = tmp_path / "boot.tpmkey"
    created = create_tpm_key(tpm_rig.tpm, "ecdsa-p256", keyfile)
    uri = tpm_rig.uri
    tpm_rig.tpm.close()  # one client at a time on swtpm
    signer = open_signer(f"tpm:{uri}#{keyfile}")
    try:
        assert isinstance(signer, TpmSigner)
        assert signer.key_id == created.key_id
        Verifier.of(signer.public_key()).verify(b"m", signer.sign(b"m"))
        assert KeyUri.parse(f"tpm:{uri}#{keyfile}").tpm == uri
    finally:
        signer.close()
        tpm_rig.tpm = tpm_rig._open()


def test_tpm_held_fleet_ca_issues_verifiable_certificates(tpm_rig, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    root_signer = create_tpm_key(tpm_rig.tpm, "ecdsa-p256", tmp_path / "root.tpmkey")
    root = pki.CertificateAuthority(
        root_signer, pki.create_root_ca(root_signer, "TPM Root", now=now)
    )
    fleet_signer = create_tpm_key(tpm_rig.tpm, "ecdsa-p256", tmp_path / "fleet.tpmkey")
    fleet = pki.CertificateAuthority(
        fleet_signer,
        pki.create_intermediate_ca(root, fleet_signer.public_key(), "TPM Fleet", now=now),
    )
    dkey = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(dkey, hashes.SHA256())
    )
    cert = pki.issue_device_certificate(
        fleet, csr.public_bytes(serialization.Encoding.PEM), "tpm-dev", now=now
    )
    crl = pki.build_crl(fleet, [], crl_number=1, now=now)
    chain = pki.verify_chain(
        cert, roots=[root.certificate], intermediates=[fleet.certificate], crls=[crl], now=now
    )
    assert pki.device_id_of(chain.leaf) == "tpm-dev"


def test_tpm_rsa_key_signs_modules(tpm_rig, tmp_path: Path) -> None:
    signer = create_tpm_key(tpm_rig.tpm, "rsa-2048", tmp_path / "mod.tpmkey")
    now = dt.datetime.now(dt.UTC)
    ca = pki.CertificateAuthority(signer, pki.create_root_ca(signer, "TPM module key", now=now))
    signed = sign_module(b"\x7fELF module bytes", ca.certificate, signer.sign)
    assert verify_module(signed, ca.certificate).module == b"\x7fELF module bytes"


def test_tpm_scheme_and_algorithm_refusals(tpm_rig, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        create_tpm_key(tpm_rig.tpm, "ed25519", tmp_path / "x.tpmkey")
    signer = create_tpm_key(tpm_rig.tpm, "ecdsa-p256", tmp_path / "k.tpmkey")
    key = tpm_key_from_bytes((tmp_path / "k.tpmkey").read_bytes())
    with pytest.raises(ConfigError):
        TpmSigner(tpm_rig.tpm, key, SignatureScheme.RSA_PSS_SHA256)
    assert TpmSigner(tpm_rig.tpm, key).key_id == signer.key_id


def test_foreign_key_blob_refused(tpm_rig, tmp_path: Path) -> None:
    create_tpm_key(tpm_rig.tpm, "ecdsa-p256", tmp_path / "k.tpmkey")
    key = tpm_key_from_bytes((tmp_path / "k.tpmkey").read_bytes())
    bad = TpmKey(key.public, key.private[:-4] + bytes(4), key.name)
    with pytest.raises((TpmError, FormatError)):
        TpmSigner(tpm_rig.tpm, bad).sign(b"x")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b'{"format": "bastion-tpm-key", "version": 1}',
        b'{"format": "x", "version": 1}',
        b'{"format": "bastion-tpm-key", "version": 1, "public": "!!", "private": "", "name": ""}',
    ],
)
def test_tpm_key_file_refused(data: bytes) -> None:
    with pytest.raises(FormatError):
        tpm_key_from_bytes(data)


def test_tpm_key_file_round_trip() -> None:
    key = TpmKey(b"\x00\x02ab", b"\x00\x01c", b"\x00\x0bname")
    assert tpm_key_from_bytes(tpm_key_to_bytes(key, "ecc-p256")) == key
