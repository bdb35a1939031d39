"""Attest-now and identity-key rotation through the agent's channel, on a gated fleet.

The fleet has a product key and golden values, so the gate is on: a device that has not
attested may not rotate its key (403 attestation_required); the agent's ``attest``
command makes it pass (a real quote from its software TPM, which measured the golden
boot), after which ``rotate-key`` switches the device to a new TPM key certified by the
enrolled AK. The old key is refused from then on, its certificate is on the CRL, and a
rotation interrupted by a crash is completed or dropped at the next start.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from test_agent import _agent, _port, _queue, serving
from tests.attestkit import boot_events, extend, golden_of

from bastion.device.agent.rotate import (
    NEXT_FILE,
    pending_identity,
    recover_rotation,
    rotate_identity,
)
from bastion.device.agent.signing import TpmRequestSigner
from bastion.device.attest import attest
from bastion.device.provision import DeviceIdentity, _x509_signature
from bastion.device.tpm_csr import build_csr
from bastion.errors import AuthError, VerificationError
from bastion.formats import enrollment as en
from bastion.io.http import HttpClient
from bastion.server.devices.models import RevokedCertificate
from bastion.tpm.quote import public_key
from bastion.tpm.software import SoftwareTpm
from bastion.trust.keys import KeyAlgorithm, generate_private_key
from bastion.trust.signer import SoftwareSigner
from bastion.trust.verdict import sign_golden

pytestmark = pytest.mark.integration

PRODUCT = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
GOOD = {"selinux": "enforcing", "randomize_va_space": 2}


def _gated_world(make_app: Any) -> tuple[Any, Any, TestClient]:
    from devicekit import build_world

    from conftest import Api

    app = make_app()
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    w = build_world(Api(client))
    pem = (
        PRODUCT.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    admin = w.headers["admin"]
    r = w.client.put(
        f"/v1/fleets/{w.fleet_id}/attestation",
        json={"product_key": pem, "posture_policy": {"require_selinux": "enforcing"}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    statement = base64.b64encode(sign_golden(golden_of(boot_events()), PRODUCT)).decode()
    r = w.client.post(
        f"/v1/fleets/{w.fleet_id}/attestation/golden",
        json={"statement": statement},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    return w, app, client


def _send(w: Any, dev: str, kind: str) -> str:
    answer = _queue(w, dev, kind)
    assert answer.status_code == 201, answer.text
    command_id: str = answer.json()["id"]
    return command_id


def _command(w: Any, dev: str, command_id: str) -> dict[str, Any]:
    answer = w.client.get(
        f"/v1/fleets/{w.fleet_id}/devices/{dev}/commands/{command_id}",
        headers=w.headers["viewer"],
    )
    found: dict[str, Any] = answer.json()
    return found


def test_attest_now_then_rotate_the_identity_key(make_app: Any, tmp_path: Path) -> None:
    w, app, client = _gated_world(make_app)
    try:
        tpm = SoftwareTpm(tmp_path / "tpm.state")
        log = extend(tpm, boot_events())
        identity = w.enrol(tpm, w.create_key(), serial="rot-1")
        state = tmp_path / "dev"
        identity.save(state)
        dev = identity.device_id
        with serving(app, _port()) as url:
            signer_box: dict[str, TpmRequestSigner] = {}

            def attest_now() -> Any:
                http = HttpClient(url, signer=signer_box["s"])
                return attest(tpm, signer_box["s"].identity, http, log, GOOD)

            def rotate_now() -> str:
                s = signer_box["s"]
                s.identity = rotate_identity(tpm, s.identity, HttpClient(url, signer=s), state)
                return "rotated"

            agent, _ = _agent(
                w, tpm, identity, url, tmp_path / "agent-data", attest=attest_now, rotate=rotate_now
            )
            assert agent.http.signer is not None
            signer_box["s"] = agent.http.signer  # type: ignore[assignment]
            # not attested yet: the gate refuses a rotation
            first = _send(w, dev, "rotate-key")
            assert agent.run(once=True) == 1
            refused = _command(w, dev, first)
            assert refused["status"] == "failed" and "attest" in refused["output"]
            assert not (state / NEXT_FILE).exists()  # refused: the pending key is dropped
            # attest now, over the channel: a real quote against the golden values
            attested = _send(w, dev, "attest")
            assert agent.run(once=True) == 1
            assert _command(w, dev, attested)["output"] == "attestation passed"
            # a key certified by another AK of the same TPM is refused
            old = signer_box["s"].identity
            _certified_by_wrong_ak(tpm, old, HttpClient(url, signer=signer_box["s"]))
            # now the rotation goes through
            second = _send(w, dev, "rotate-key")
            assert agent.run(once=True) == 1
            done = _command(w, dev, second)
            assert done["status"] == "succeeded", done
            new = DeviceIdentity.load(state)
            assert new.key_public != old.key_public and not (state / NEXT_FILE).exists()
            cert = x509.load_pem_x509_certificate(new.certificate_pem.encode())
            assert cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ) == public_key(new.key_public).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            # the old key is refused, the new one accepted, the old certificate revoked
            stale = HttpClient(url, signer=TpmRequestSigner(tpm, old, w.ctx.clock))
            with pytest.raises(AuthError):
                stale.call_object("GET", "/v1/device")
            fresh = HttpClient(url, signer=TpmRequestSigner(tpm, new, w.ctx.clock))
            assert fresh.call_object("GET", "/v1/device")["id"] == dev
            old_serial = (
                f"{x509.load_pem_x509_certificate(old.certificate_pem.encode()).serial_number:x}"
            )
            with w.ctx.db.session(write=False) as session:
                row = session.get(RevokedCertificate, old_serial)
                assert row is not None and row.reason == "superseded"
            assert "device.key.rotate" in w.audit_events()

            # a crash after the server switched but before identity.json was written
            before = (state / "identity.json").read_bytes()
            newer = rotate_identity(tpm, new, fresh, state)
            (state / "identity.json").write_bytes(before)
            pending = newer.__class__.from_json(before)
            from dataclasses import replace

            (state / NEXT_FILE).write_bytes(
                replace(
                    pending, key_public=newer.key_public, key_private=newer.key_private
                ).to_json()
            )
            pend = pending_identity(state)
            assert pend is not None
            probe = HttpClient(url, signer=TpmRequestSigner(tpm, pend, w.ctx.clock))
            recovered = recover_rotation(tpm, new, state, probe)
            assert recovered.key_public == newer.key_public
            assert recovered.certificate_pem == newer.certificate_pem
            assert DeviceIdentity.load(state).key_public == newer.key_public
            # a pending key the server never saw is dropped
            key = tpm.create_signing_key("ecc-p256")
            (state / NEXT_FILE).write_bytes(
                replace(recovered, key_public=key.public, key_private=key.private).to_json()
            )
            pend = pending_identity(state)
            assert pend is not None
            probe = HttpClient(url, signer=TpmRequestSigner(tpm, pend, w.ctx.clock))
            assert recover_rotation(tpm, recovered, state, probe) == recovered
            assert not (state / NEXT_FILE).exists()
    finally:
        client.__exit__(None, None, None)


def _certified_by_wrong_ak(tpm: SoftwareTpm, identity: DeviceIdentity, http: HttpClient) -> None:
    from cryptography.x509.oid import NameOID

    key = tpm.create_signing_key("ecc-p256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.device_id)])
    csr_der = build_csr(name, public_key(key.public), lambda d: _x509_signature(tpm.sign(key, d)))
    other_ak = tpm.create_ak()
    certified = tpm.certify(other_ak, key, en.certify_qualifying_data(csr_der))
    body = {
        "key_public": base64.b64encode(key.public).decode(),
        "csr": x509.load_der_x509_csr(csr_der).public_bytes(serialization.Encoding.PEM).decode(),
        "certify_attest": base64.b64encode(certified.attest).decode(),
        "certify_signature": base64.b64encode(certified.signature).decode(),
    }
    with pytest.raises(VerificationError):
        http.call_object("POST", "/v1/device/identity/rotate", body)
