"""TPM-bound enrolment over HTTP: end to end on swtpm, and the negative table.

Each case runs on SQLite and PostgreSQL (``db_url``) with a private swtpm driven
through tpm2-pytss (the ``tss`` backend).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from tests.conftest import need_tool, need_tss

from bastion.device.provision import DeviceIdentity, build_enrollment
from bastion.errors import AuthError, BastionError, ConflictError, VerificationError
from bastion.formats import enrollment as en
from bastion.server.provisioning.policy import ek_hash

from .devicekit import (
    FleetWorld,
    certified_tss_tpm,
    forget_devices,
    manufacture_swtpm,
    set_ek_policy,
    shared_world,
    trust_ek_ca,
    tss_tpm,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ek_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """swtpm's local CA folder: it certifies the EK of every TPM made here."""
    need_tss()
    need_tool("swtpm_setup")
    return tmp_path_factory.mktemp("ek-ca")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ek_ca: Path):  # type: ignore[no-untyped-def]
    """Fleet "cams" is certified (the default policy) and trusts swtpm's EK CA."""
    with shared_world(request.param, tmp_path_factory.mktemp("enrol")) as w:
        # the test clock stands still; TPMs made later in this module have EK
        # certificates valid from their making, so the server's "now" runs an hour ahead
        w.ctx.clock.advance(3600)
        set_ek_policy(w, w.fleet_id, "certified")
        w.extra_ca = manufacture_swtpm(tmp_path_factory.mktemp("tpm-seed"), ek_ca)  # type: ignore[attr-defined]
        trust_ek_ca(w, w.fleet_id, w.extra_ca.read_bytes())  # type: ignore[attr-defined]
        yield w


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory, ek_ca: Path):  # type: ignore[no-untyped-def]
    with certified_tss_tpm(tmp_path_factory.mktemp("tpm-a"), ek_ca) as t:
        yield t


@pytest.fixture(autouse=True)
def _one_tpm_many_times(world: FleetWorld):  # type: ignore[no-untyped-def]
    """The module's TPM enrols in many tests: forget its devices after each one."""
    yield
    forget_devices(world)


def test_enrol_end_to_end(world: FleetWorld, tpm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key()
    before = set(world.audit_events())
    identity = world.enrol(tpm, key, serial="cam-001", fleet_id=world.fleet_id)
    assert identity.fleet_id == world.fleet_id
    cert = x509.load_pem_x509_certificate(identity.certificate_pem.encode())
    ca = x509.load_pem_x509_certificate(identity.ca_certificate_pem.encode())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"urn:bastion:device:{identity.device_id}" in san.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    # the API key opens only through this TPM, and works
    api_key = identity.api_key(tpm)
    assert api_key.startswith("bst_dev_")
    own = world.client.get("/v1/device", headers={"Authorization": f"Bearer {api_key}"})
    assert own.status_code == 200, own.text
    assert own.json()["id"] == identity.device_id and own.json()["serial"] == "cam-001"
    # saved and reloaded identity still opens the key
    identity.save(tmp_path / "state")
    assert DeviceIdentity.load(tmp_path / "state").api_key(tpm) == api_key
    # the key of max_uses=1 is used up; the operator sees the use
    listed = world.client.get(
        f"/v1/fleets/{world.fleet_id}/provisioning-keys", headers=world.headers["admin"]
    ).json()
    mine = [k for k in listed if key.startswith(k["prefix"])]
    assert mine[0]["uses"] == 1 and "key" not in mine[0]
    events = world.audit_events()
    assert {"provisioning_key.create", "enroll.begin", "enroll.finish"} <= set(events)
    del before


def test_sealed_key_cannot_be_opened_by_another_tpm(world: FleetWorld, tpm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    identity = world.enrol(tpm, world.create_key())
    with tss_tpm(tmp_path / "tpm-b") as other, pytest.raises(BastionError):
        identity.api_key(other)


def _begin(world: FleetWorld, tpm, key: str, **extra: str):  # type: ignore[no-untyped-def]
    ak, _, body = build_enrollment(tpm, "serial-0001")
    body.update(extra)
    response = world.client.post(
        "/v1/enroll/begin", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    return ak, body, response


def _finish(world: FleetWorld, tpm, ak, key: str, begin: dict[str, str]):  # type: ignore[no-untyped-def]
    secret = tpm.activate_credential(
        ak, base64.b64decode(begin["credential_blob"]), base64.b64decode(begin["encrypted_secret"])
    )
    cid = begin["challenge_id"]
    proof = en.finish_proof(en.derive_keys(secret, cid), cid)
    return world.client.post(
        "/v1/enroll/finish",
        json={"challenge_id": cid, "proof": base64.b64encode(proof).decode()},
        headers={"Authorization": f"Bearer {key}"},
    )


# --- the negative table ----------------------------------------------------------------------


def test_expired_key(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key(ttl_seconds=60)
    world.ctx.clock.advance(61)
    with pytest.raises(AuthError, match="expired"):
        world.enrol(tpm, key)


def test_used_up_key(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key(max_uses=1)
    world.enrol(tpm, key)
    with pytest.raises(AuthError, match="used up"):
        world.enrol(tpm, key, serial="serial-0002")


def test_revoked_key(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key()
    key_id = next(
        k["id"]
        for k in world.client.get(
            f"/v1/fleets/{world.fleet_id}/provisioning-keys", headers=world.headers["admin"]
        ).json()
        if key.startswith(k["prefix"])
    )
    gone = world.client.delete(
        f"/v1/fleets/{world.fleet_id}/provisioning-keys/{key_id}", headers=world.headers["admin"]
    )
    assert gone.status_code == 204
    with pytest.raises(AuthError, match="revoked"):
        world.enrol(tpm, key)


def test_wrong_fleet_key(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key(fleet_id=world.other_fleet_id)
    with pytest.raises(AuthError, match="another fleet"):
        world.enrol(tpm, key, fleet_id=world.fleet_id)


def test_ek_not_on_allow_list(world: FleetWorld, tpm, tmp_path: Path, ek_ca: Path) -> None:  # type: ignore[no-untyped-def]
    with certified_tss_tpm(tmp_path / "tpm-b", ek_ca) as other:
        key = world.create_key(allow_ek_hashes=[ek_hash(other.ek_public())], max_uses=2)
        with pytest.raises(VerificationError, match="allow-list"):
            world.enrol(tpm, key)
        assert world.enrol(other, key).device_id  # the listed EK is admitted


def test_serial_allow_list(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key(allow_serials=["cam-007"], max_uses=2)
    with pytest.raises(VerificationError, match="allow-list"):
        world.enrol(tpm, key, serial="cam-008")
    assert world.enrol(tpm, key, serial="cam-007").device_id


def test_credential_activated_by_another_tpm(world: FleetWorld, tpm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The attacker's TPM (AK, key, certify) presents the victim TPM's EK. In a certified
    fleet begin already refuses (the EK certificate is not the victim's EK); in a
    development fleet, credential activation is what stops it."""
    with tss_tpm(tmp_path / "victim0") as victim:
        _, _, refused = _begin(
            world, tpm, world.create_key(), ek_public=base64.b64encode(victim.ek_public()).decode()
        )
    assert refused.status_code == 403, refused.text
    assert "not the presented EK" in refused.json()["detail"]
    key = world.create_key(fleet_id=world.other_fleet_id)
    with tss_tpm(tmp_path / "victim") as victim:
        ak, _body, begin = _begin(
            world, tpm, key, ek_public=base64.b64encode(victim.ek_public()).decode()
        )
        assert begin.status_code == 200, begin.text
        with pytest.raises(BastionError):  # the attacker's TPM cannot activate it
            _finish(world, tpm, ak, key, begin.json())
        with pytest.raises(BastionError):  # nor can the victim's: the AK is not there
            _finish(world, victim, ak, key, begin.json())
    guessed = world.client.post(
        "/v1/enroll/finish",
        json={
            "challenge_id": begin.json()["challenge_id"],
            "proof": base64.b64encode(b"\0" * 32).decode(),
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert guessed.status_code in (401, 403), guessed.text
    assert "device" not in guessed.json()


def test_csr_key_not_certified(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key()
    _, _, other = build_enrollment(tpm, "serial-0001")
    _, _, response = _begin(world, tpm, key, csr=other["csr"])
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "verification_failed"


def test_replayed_challenge(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key(max_uses=5)
    ak, _, begin = _begin(world, tpm, key, serial="replay-1")
    assert begin.status_code == 200, begin.text
    first = _finish(world, tpm, ak, key, begin.json())
    assert first.status_code == 200, first.text
    replay = _finish(world, tpm, ak, key, begin.json())
    assert replay.status_code in (401, 403), replay.text
    assert "unknown or used" in replay.json()["detail"]
    with world.ctx.db.session(write=False) as session:
        from sqlalchemy import func, select

        from bastion.server.devices.models import Device

        count = select(func.count()).select_from(Device).where(Device.serial == "replay-1")
        assert session.execute(count).scalar_one() == 1


def test_challenge_expires(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key()
    ak, _, begin = _begin(world, tpm, key)
    world.ctx.clock.advance(61)
    late = _finish(world, tpm, ak, key, begin.json())
    assert late.status_code == 401 and "expired" in late.json()["detail"]


def test_wrong_proof_burns_the_challenge(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key()
    ak, _, begin = _begin(world, tpm, key)
    cid = begin.json()["challenge_id"]
    bad = world.client.post(
        "/v1/enroll/finish",
        json={"challenge_id": cid, "proof": base64.b64encode(b"\1" * 32).decode()},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert bad.status_code in (401, 403)
    assert _finish(world, tpm, ak, key, begin.json()).status_code in (401, 403)  # consumed


def test_challenge_of_another_key(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key1, key2 = world.create_key(), world.create_key()
    ak, _, begin = _begin(world, tpm, key1)
    assert _finish(world, tpm, ak, key2, begin.json()).status_code in (401, 403)


def test_rate_limit_per_key(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key(rate_per_minute=2, max_uses=10)
    codes = [_begin(world, tpm, key)[2].status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_refusals_are_audited(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key(allow_serials=["x"])
    _, _, response = _begin(world, tpm, key)
    assert response.status_code == 403
    assert "enroll.refused" in world.audit_events()


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("ek_public", "not base64!", 400),
        ("ak_public", base64.b64encode(b"\x00\x04abcd").decode(), 400),
        (
            "csr",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            400,
        ),
        ("certify_attest", base64.b64encode(b"\xff" * 40).decode(), 403),
        ("serial", "", 422),
        ("serial", "s" * 500, 422),
        ("unknown_field", "x", 422),
    ],
)
def test_malformed_begin(world: FleetWorld, tpm, field: str, value: str, status: int) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key()
    _, _, response = _begin(world, tpm, key, **{field: value})
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text


def test_provisioning_key_needs_bearer(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    _, body, _ = _begin(world, tpm, world.create_key())
    for headers in ({}, world.headers["admin"]):
        response = world.client.post("/v1/enroll/begin", json=body, headers=headers)
        assert response.status_code in (401, 403)


def test_mutated_evidence_never_5xx(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    """One flipped bit anywhere in any TPM structure: a 4xx, never a 5xx. The one 2xx
    allowed is a changed EK modulus, which is still a valid key: the server cannot tell,
    and the credential it answers cannot be activated by this (or any real) TPM."""
    import random

    key = world.create_key(max_uses=1000, rate_per_minute=0)
    _, _, body = build_enrollment(tpm, "fuzz-1")
    rng = random.Random(7)
    fields = ["ek_public", "ak_public", "key_public", "certify_attest", "certify_signature"]
    for i in range(60):
        name = fields[i % len(fields)]
        raw = bytearray(base64.b64decode(body[name]))
        pos = rng.randrange(len(raw))
        raw[pos] ^= 1 << rng.randrange(8)
        mutated = dict(body, **{name: base64.b64encode(bytes(raw)).decode()})
        response = world.client.post(
            "/v1/enroll/begin", json=mutated, headers={"Authorization": f"Bearer {key}"}
        )
        if response.status_code == 200 and name == "ek_public":
            continue
        assert 400 <= response.status_code < 500, (name, pos, response.text)


def test_key_revoked_between_begin_and_finish(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key = world.create_key(max_uses=3)
    ak, _, begin = _begin(world, tpm, key)
    assert begin.status_code == 200, begin.text
    key_id = next(
        k["id"]
        for k in world.client.get(
            f"/v1/fleets/{world.fleet_id}/provisioning-keys", headers=world.headers["admin"]
        ).json()
        if key.startswith(k["prefix"])
    )
    world.client.delete(
        f"/v1/fleets/{world.fleet_id}/provisioning-keys/{key_id}", headers=world.headers["admin"]
    )
    late = _finish(world, tpm, ak, key, begin.json())
    assert late.status_code == 401 and "revoked" in late.json()["detail"], late.text


# --- EK policy, EK certificates, deny-list, clones (hardening) ---------------------------------


def _ca(name: str, *, days: int = 365) -> tuple[Any, x509.Certificate]:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _ek_cert(ca_key: Any, ca: x509.Certificate, ek_public: bytes, *, expired: bool = False) -> str:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization

    from bastion.tpm.quote import public_key

    now = dt.datetime.now(dt.UTC)
    start, end = (
        (now - dt.timedelta(days=30), now - dt.timedelta(days=1))
        if expired
        else (now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.subject)
        .public_key(public_key(ek_public))  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(ca_key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def _trusted_test_ca(world: FleetWorld) -> tuple[Any, x509.Certificate]:
    from cryptography.hazmat.primitives import serialization

    key, ca = _ca("Test TPM Maker CA")
    trust_ek_ca(world, world.fleet_id, ca.public_bytes(serialization.Encoding.PEM))
    return key, ca


def _refusal(response: Any, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert text in response.json()["detail"], response.text


def test_negative_ek_certificate_from_untrusted_ca(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key, ca = _ca("Nobody's TPM CA")
    cert = _ek_cert(key, ca, tpm.ek_public())
    _, _, response = _begin(world, tpm, world.create_key(), ek_certificate=cert)
    _refusal(response, 403, "untrusted")


def test_negative_expired_ek_certificate(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    key, ca = _trusted_test_ca(world)
    cert = _ek_cert(key, ca, tpm.ek_public(), expired=True)
    _, _, response = _begin(world, tpm, world.create_key(), ek_certificate=cert)
    _refusal(response, 403, "expired")
    # the same CA with a current certificate is accepted: only the expiry was wrong
    good = _ek_cert(key, ca, tpm.ek_public())
    _, _, ok = _begin(world, tpm, world.create_key(), ek_certificate=good)
    assert ok.status_code == 200, ok.text


def test_negative_ek_certificate_of_another_key(world: FleetWorld, tpm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, ca = _trusted_test_ca(world)
    with tss_tpm(tmp_path / "other") as other:
        cert = _ek_cert(key, ca, other.ek_public())  # a real certificate, for another EK
    _, _, response = _begin(world, tpm, world.create_key(), ek_certificate=cert)
    _refusal(response, 403, "not the presented EK")


def test_negative_software_tpm_into_certified_fleet(world: FleetWorld, tmp_path: Path) -> None:
    from bastion.tpm.software import SoftwareTpm

    soft = SoftwareTpm(tmp_path / "tpm.state")
    assert soft.ek_certificate() is None
    with pytest.raises(VerificationError, match="no EK certificate"):
        world.enrol(soft, world.create_key())
    assert "enroll.refused" in world.audit_events()
    # the same software TPM enrols into the development fleet (policy "any")
    identity = world.enrol(soft, world.create_key(fleet_id=world.other_fleet_id))
    device = world.client.get(
        f"/v1/fleets/{world.other_fleet_id}/devices/{identity.device_id}",
        headers=world.headers["viewer"],
    ).json()
    assert device["ek_trust"] == "any"


def test_negative_denied_ek_survives_deletion_until_lifted(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    admin, fleet = world.headers["admin"], world.fleet_id
    identity = world.enrol(tpm, world.create_key(), serial="cam-denied")
    revoked = world.client.post(
        f"/v1/fleets/{fleet}/devices/{identity.device_id}/revoke", headers=admin
    )
    assert revoked.status_code == 200, revoked.text
    gone = world.client.delete(f"/v1/fleets/{fleet}/devices/{identity.device_id}", headers=admin)
    assert gone.status_code == 204, gone.text
    denied = world.client.get(f"/v1/fleets/{fleet}/ek-denylist", headers=admin).json()
    ek = ek_hash(tpm.ek_public())
    assert [d["ek_sha256"] for d in denied] == [ek]
    _, _, response = _begin(world, tpm, world.create_key())
    _refusal(response, 403, "deny-list")
    from sqlalchemy import select

    from bastion.server.audit.models import AuditEntry

    with world.ctx.db.session(write=False) as session:
        refusals = session.execute(
            select(AuditEntry.details).where(AuditEntry.event == "enroll.refused")
        ).scalars()
        assert any("deny-list" in d and ek in d for d in refusals)
    lifted = world.client.delete(f"/v1/fleets/{fleet}/ek-denylist/{ek}", headers=admin)
    assert lifted.status_code == 204, lifted.text
    assert world.enrol(tpm, world.create_key(), serial="cam-denied").device_id


def test_negative_clone_ek(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    world.enrol(tpm, world.create_key(), serial="cam-a")
    with pytest.raises(ConflictError, match="clone"):
        world.enrol(tpm, world.create_key(), serial="cam-b")


def test_negative_duplicate_serial(world: FleetWorld, tpm, tmp_path: Path, ek_ca: Path) -> None:  # type: ignore[no-untyped-def]
    world.enrol(tpm, world.create_key(), serial="cam-dup")
    with (
        certified_tss_tpm(tmp_path / "tpm-b", ek_ca) as other,
        pytest.raises(ConflictError, match="serial"),
    ):
        world.enrol(other, world.create_key(), serial="cam-dup")


def test_negative_serial_only_allow_list_match(
    world: FleetWorld, tpm, tmp_path: Path, ek_ca: Path
) -> None:  # type: ignore[no-untyped-def]
    """Serials and EK hashes listed: the right serial with an unlisted EK is refused."""
    with certified_tss_tpm(tmp_path / "tpm-b", ek_ca) as other:
        listed_ek = ek_hash(other.ek_public())
        key = world.create_key(allow_serials=["cam-x"], allow_ek_hashes=[listed_ek], max_uses=3)
        with pytest.raises(VerificationError, match="allow-list"):
            world.enrol(tpm, key, serial="cam-x")
        pair_key = world.create_key(
            allow_devices=[{"serial": "cam-y", "ek_sha256": listed_ek}], max_uses=3
        )
        with pytest.raises(VerificationError, match="allow-list"):
            world.enrol(tpm, pair_key, serial="cam-y")  # the pair's serial, another EK
        assert world.enrol(other, pair_key, serial="cam-y").device_id


def test_allow_list_policy_needs_listed_ek(world: FleetWorld, tmp_path: Path) -> None:
    from bastion.tpm.software import SoftwareTpm

    soft = SoftwareTpm(tmp_path / "tpm.state")
    set_ek_policy(world, world.other_fleet_id, "allow-list")
    try:
        unlisted = world.create_key(fleet_id=world.other_fleet_id, allow_serials=["gw-1"])
        with pytest.raises(VerificationError, match="allow-list"):
            world.enrol(soft, unlisted, serial="gw-1")
        listed = world.create_key(
            fleet_id=world.other_fleet_id, allow_ek_hashes=[ek_hash(soft.ek_public())]
        )
        assert world.enrol(soft, listed, serial="gw-1").device_id
    finally:
        set_ek_policy(world, world.other_fleet_id, "any")


def test_interop_swtpm_setup_ek_certificate(
    world: FleetWorld, tpm, ek_ca: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """swtpm_setup made the EK certificate and its CA; openssl agrees it chains, and the
    fleet, trusting that CA, enrols the TPM as certified."""
    import subprocess

    der = tpm.ek_certificate()
    assert der
    (tmp_path / "ek.der").write_bytes(der)
    subprocess.run(
        [
            "openssl",
            "x509",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "ek.der"),
            "-out",
            str(tmp_path / "ek.pem"),
        ],
        check=True,
    )
    verified = subprocess.run(
        [
            "openssl",
            "verify",
            "-partial_chain",
            "-CAfile",
            str(ek_ca / "issuercert.pem"),
            str(tmp_path / "ek.pem"),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    identity = world.enrol(tpm, world.create_key(), serial="cam-interop")
    device = world.client.get(
        f"/v1/fleets/{world.fleet_id}/devices/{identity.device_id}", headers=world.headers["viewer"]
    ).json()
    assert device["ek_trust"] == "certified"
    cas = world.client.get(f"/v1/fleets/{world.fleet_id}/ek-cas", headers=world.headers["viewer"])
    assert "CN=swtpm-localca" in [c["subject"] for c in cas.json()]


def test_negative_genuine_ek_certificate_of_a_maker_the_fleet_does_not_trust(
    world: FleetWorld,
    tpm,  # type: ignore[no-untyped-def]
) -> None:
    """swtpm's real EK certificate, into a certified fleet that trusts only another
    maker (and, before that, no maker at all)."""
    from cryptography.hazmat.primitives import serialization

    fleet = world.other_fleet_id
    set_ek_policy(world, fleet, "certified")
    try:
        with pytest.raises(VerificationError, match="trusts no EK CA"):
            world.enrol(tpm, world.create_key(fleet_id=fleet))
        _, other_maker = _ca("Another TPM Maker")
        trust_ek_ca(world, fleet, other_maker.public_bytes(serialization.Encoding.PEM))
        with pytest.raises(VerificationError, match="untrusted"):
            world.enrol(tpm, world.create_key(fleet_id=fleet))
    finally:
        set_ek_policy(world, fleet, "any")


def test_negative_policy_tightened_between_begin_and_finish(world: FleetWorld, tpm) -> None:  # type: ignore[no-untyped-def]
    fleet = world.other_fleet_id  # development: begin passes with policy "any"
    key = world.create_key(fleet_id=fleet)
    ak, _, begin = _begin(world, tpm, key)
    assert begin.status_code == 200, begin.text
    set_ek_policy(world, fleet, "certified")
    try:
        late = _finish(world, tpm, ak, key, begin.json())
        _refusal(late, 403, "became 'certified'")
    finally:
        set_ek_policy(world, fleet, "any")
