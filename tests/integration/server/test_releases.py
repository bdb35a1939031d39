"""Releases: bundle upload verified against the fleet keyring, external URLs, golden
values, the fleet target, bundle download with Range, and the TUF folder at /tuf/.

Each case runs on SQLite and PostgreSQL (one app per module and backend).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.bundlekit import release_keys, synthetic_bundle

from bastion.tpm.software import SoftwareTpm

from .devicekit import FleetWorld, shared_world

pytestmark = pytest.mark.integration
KEYS = release_keys()
OTHER = release_keys("other")
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("releases")
    (folder / "tuf" / "targets").mkdir(parents=True)
    with shared_world(request.param, folder, tuf_dir=folder / "tuf") as w:
        yield w


def _pem(cert: object) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[attr-defined]


def _upload(world: FleetWorld, data: bytes, role: str = "operator", fleet: str | None = None):  # type: ignore[no-untyped-def]
    return world.client.post(
        f"/v1/fleets/{fleet or world.fleet_id}/releases",
        content=data,
        headers={**world.headers[role], **OCTET},
    )


def _device(world: FleetWorld, folder: Path, serial: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    tpm = SoftwareTpm(folder / "tpm.state")
    identity = world.enrol(tpm, world.create_key(), serial=serial)
    return world.device_headers(identity, tpm)


def test_publish_verifies_against_the_fleet_keyring(world: FleetWorld, tmp_path: Path) -> None:
    c = world.client
    fleet = world.fleet_id
    bundle = synthetic_bundle(KEYS, 40, version="3.0.0", svn=5)
    # no keyring yet: nothing can be published
    assert _upload(world, bundle).status_code == 404
    ring = {"keyring": _pem(KEYS.ca)}
    assert (
        c.put(f"/v1/fleets/{fleet}/release-keyring", json=ring, headers=world.headers["operator"])
    ).status_code == 403
    put = c.put(f"/v1/fleets/{fleet}/release-keyring", json=ring, headers=world.headers["admin"])
    assert put.status_code == 200, put.text
    assert c.put(
        f"/v1/fleets/{fleet}/release-keyring",
        json={"keyring": "nope"},
        headers=world.headers["admin"],
    ).status_code in (400, 422)
    # refused: another CA's bundle, one flipped payload bit, not octet-stream
    assert _upload(world, synthetic_bundle(OTHER, 20, version="3.0.0")).status_code == 403
    flipped = bytearray(bundle)
    flipped[4096 * 3 + 1] ^= 1
    bad = _upload(world, bytes(flipped))
    assert bad.status_code == 403 and "data block 3" in bad.json()["detail"]
    wrong_type = c.post(
        f"/v1/fleets/{fleet}/releases",
        content=b"x" * 10,
        headers={**world.headers["operator"], "Content-Type": "text/plain"},
    )
    assert wrong_type.status_code == 400
    assert _upload(world, bundle, role="viewer").status_code == 403
    # accepted: version, compatible and SVN come from the signed manifest
    made = _upload(world, bundle)
    assert made.status_code == 201, made.text
    rel = made.json()
    assert (rel["version"], rel["compatible"], rel["svn"], rel["source"]) == (
        "3.0.0",
        "bastion-test",
        5,
        "store",
    )
    assert rel["length"] == len(bundle) and rel["signer"] == "bastion release signer"
    assert _upload(world, bundle).status_code == 409  # same version again
    store = Path(world.ctx.settings.resolved_release_store())
    assert sorted(p.name for p in store.iterdir()) == [f"{rel['sha256']}.raucb"]  # no leftovers
    listed = c.get(f"/v1/fleets/{fleet}/releases", headers=world.headers["viewer"]).json()
    assert rel["id"] in [r["id"] for r in listed]
    assert (
        c.get(f"/v1/fleets/{fleet}/releases/{rel['id']}", headers=world.headers["viewer"]).json()[
            "sha256"
        ]
        == rel["sha256"]
    )
    # the other fleet cannot see it
    other = c.get(
        f"/v1/fleets/{world.other_fleet_id}/releases/{rel['id']}", headers=world.headers["admin"]
    )
    assert other.status_code == 404
    # a device of the fleet fetches it with HTTP Range
    dev = _device(world, tmp_path / "d", "rel-dev-1")
    part = c.get(
        f"/v1/device/update/bundle/{rel['id']}", headers={**dev, "Range": "bytes=4096-8191"}
    )
    assert part.status_code == 206 and part.content == bundle[4096:8192]
    whole = c.get(f"/v1/device/update/bundle/{rel['id']}", headers=dev)
    assert whole.status_code == 200 and whole.content == bundle
    assert (
        c.get(f"/v1/device/update/bundle/{rel['id']}", headers=world.headers["admin"]).status_code
        == 403
    )
    assert "release.publish" in world.audit_events()


def test_external_url_and_fleet_target(world: FleetWorld, tmp_path: Path) -> None:
    c = world.client
    fleet = world.fleet_id
    body = {
        "url": "https://cdn.example.org/b/4.0.0.raucb",
        "length": 1 << 20,
        "sha256": "cd" * 32,
        "version": "4.0.0",
        "compatible": "bastion-test",
        "svn": 6,
    }
    for bad in (
        {"url": "ftp://cdn.example.org/x"},
        {"url": "https://user:pw@cdn.example.org/x"},
        {"url": "https:///nohost"},
        {"sha256": "CD" * 32},
        {"length": 0},
    ):
        refused = c.post(
            f"/v1/fleets/{fleet}/releases/external",
            json={**body, **bad},
            headers=world.headers["operator"],
        )
        assert refused.status_code in (400, 422), (bad, refused.text)
    made = c.post(
        f"/v1/fleets/{fleet}/releases/external", json=body, headers=world.headers["operator"]
    )
    assert made.status_code == 201, made.text
    rel = made.json()
    assert rel["source"] == "url" and rel["url"] == body["url"] and rel["svn"] == 6
    dev = _device(world, tmp_path / "d", "rel-dev-2")
    target = c.put(
        f"/v1/fleets/{fleet}/target-release",
        json={"release_id": rel["id"]},
        headers=world.headers["operator"],
    )
    assert target.status_code == 200 and target.json()["release"]["version"] == "4.0.0"
    got = c.get("/v1/device/target-release", headers=dev).json()
    assert (got["release"], got["url"], got["svn"], got["sha256"]) == (
        "4.0.0",
        body["url"],
        6,
        "cd" * 32,
    )
    # a release of another fleet cannot be the target
    other = c.put(
        f"/v1/fleets/{world.other_fleet_id}/target-release",
        json={"release_id": rel["id"]},
        headers=world.headers["admin"],
    )
    assert other.status_code == 404
    cleared = c.put(
        f"/v1/fleets/{fleet}/target-release",
        json={"release_id": None},
        headers=world.headers["operator"],
    )
    assert cleared.status_code == 200 and cleared.json() == {"release": None}
    assert c.get("/v1/device/target-release", headers=dev).json()["release"] is None


def test_golden_values_recorded_per_release(world: FleetWorld) -> None:
    from tests.attestkit import boot_events, golden_of

    from bastion.trust.keys import KeyAlgorithm, generate_private_key
    from bastion.trust.signer import SoftwareSigner
    from bastion.trust.verdict import sign_golden

    c = world.client
    fleet = world.fleet_id
    product = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
    pem = (
        product.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    body = {"url": "https://cdn.example.org/5.raucb", "length": 10, "sha256": "ef" * 32}
    rel = c.post(
        f"/v1/fleets/{fleet}/releases/external",
        json={**body, "version": "5.0.0", "compatible": "bastion-test"},
        headers=world.headers["operator"],
    ).json()
    golden = golden_of(boot_events(), version="5.0.0")
    statement = base64.b64encode(sign_golden(golden, product)).decode()
    path = f"/v1/fleets/{fleet}/releases/{rel['id']}/golden"
    # no product key yet
    assert (
        c.put(path, json={"statement": statement}, headers=world.headers["admin"]).status_code
        == 409
    )
    settings = c.put(
        f"/v1/fleets/{fleet}/attestation",
        json={"product_key": pem, "gating": False},
        headers=world.headers["admin"],
    )
    assert settings.status_code == 200, settings.text
    assert (
        c.put(path, json={"statement": statement}, headers=world.headers["operator"]).status_code
        == 403
    )
    wrong = base64.b64encode(sign_golden(golden_of(boot_events(), version="9"), product)).decode()
    assert c.put(path, json={"statement": wrong}, headers=world.headers["admin"]).status_code == 409
    forged = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
    bad = base64.b64encode(sign_golden(golden, forged)).decode()
    assert c.put(path, json={"statement": bad}, headers=world.headers["admin"]).status_code == 403
    done = c.put(path, json={"statement": statement}, headers=world.headers["admin"])
    assert done.status_code == 200, done.text
    assert done.json()["golden_pcrs"] == {str(i): v.hex() for i, v in sorted(golden.pcrs.items())}


def test_tuf_folder_is_served_read_only(world: FleetWorld, tmp_path: Path) -> None:
    c = world.client
    tuf = Path(world.ctx.settings.tuf_dir)
    (tuf / "1.root.json").write_bytes(b'{"signed": {}}')
    (tuf / "targets" / "abc.bundle").write_bytes(os.urandom(100))
    (tuf / ".secret").write_bytes(b"x")
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"secret")
    (tuf / "link.json").symlink_to(outside)
    got = c.get("/tuf/1.root.json")
    assert got.status_code == 200 and got.content == b'{"signed": {}}'
    assert got.headers["content-type"].startswith("application/json")
    assert c.get("/tuf/targets/abc.bundle").content == (tuf / "targets" / "abc.bundle").read_bytes()
    for bad in (
        "/tuf/.secret",
        "/tuf/link.json",
        "/tuf/../bastion.db",
        "/tuf/%2e%2e/x",
        "/tuf/targets",
        "/tuf/",
    ):
        assert c.get(bad).status_code == 404, bad
    assert c.put("/tuf/1.root.json", content=b"x", headers=OCTET).status_code == 405
    assert (
        c.get("/tuf/1.root.json", headers={"Authorization": "Bearer bst_dev_nope"}).status_code
        == 401
    )


def test_bundle_golden_values_verified_and_recorded_on_publish(world: FleetWorld) -> None:
    """ADR 0037: a bundle's golden statement must verify with the fleet's product key and
    be about this release; it is then recorded with the release. Negative table first."""
    import hashlib

    from tests.attestkit import boot_events, golden_of

    from bastion.formats.raucm import GOLDEN_FILE, GoldenRef
    from bastion.trust.keys import KeyAlgorithm, generate_private_key
    from bastion.trust.signer import SoftwareSigner
    from bastion.trust.verdict import sign_golden

    c = world.client
    fleet = world.other_fleet_id
    admin = world.headers["admin"]
    ring = {"keyring": _pem(KEYS.ca)}
    assert c.put(f"/v1/fleets/{fleet}/release-keyring", json=ring, headers=admin).status_code == 200
    product = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
    forged = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
    golden = golden_of(boot_events(), svn=7, version="7.0.0")
    good = sign_golden(golden, product)
    store = Path(world.ctx.settings.resolved_release_store())
    # the store is made by the first upload: alone (or first on an xdist worker) it is absent
    before = sorted(p.name for p in store.iterdir()) if store.is_dir() else []

    def up(statement: bytes, version: str = "7.0.0", svn: int = 7, **kw: object) -> object:
        data = synthetic_bundle(KEYS, 20, version=version, svn=svn, golden=statement, **kw)  # type: ignore[arg-type]
        return _upload(world, data, fleet=fleet)

    # no product key: the statement cannot be checked, so the bundle is refused
    no_key = up(good)
    assert no_key.status_code == 409 and "product key" in no_key.json()["detail"]  # type: ignore[attr-defined]
    pem = (
        product.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = c.put(
        f"/v1/fleets/{fleet}/attestation",
        json={"product_key": pem, "gating": False},
        headers=admin,
    )
    assert settings.status_code == 200, settings.text
    refusals = [
        (up(sign_golden(golden, forged)), 403, "signatures"),  # another key signed it
        (up(good, version="7.0.1"), 403, "for version '7.0.0'"),  # another release's
        (up(good, svn=8), 403, "security version 7"),  # another SVN
        (up(b"not an envelope" * 4), 400, "envelope"),  # not a statement at all
        (
            up(good, golden_ref=GoldenRef(GOLDEN_FILE, "00" * 32, len(good), 4096)),
            403,
            "names",
        ),  # the signed manifest names other bytes
    ]
    for response, status, needle in refusals:
        assert response.status_code == status, response.text  # type: ignore[attr-defined]
        assert needle in response.json()["detail"]  # type: ignore[attr-defined]
    assert sorted(p.name for p in store.iterdir()) == before  # every refusal discarded
    made = up(good)
    assert made.status_code == 201, made.text  # type: ignore[attr-defined]
    rel = made.json()  # type: ignore[attr-defined]
    assert rel["golden_pcrs"] == {str(i): v.hex() for i, v in sorted(golden.pcrs.items())}
    with world.ctx.db.session(write=False) as session:
        from bastion.server.releases.models import Release

        row = session.get(Release, rel["id"])
        assert row is not None and row.golden_statement == good
    with world.ctx.db.session(write=False) as session:
        from sqlalchemy import select

        from bastion.server.audit.models import AuditEntry

        details = session.execute(
            select(AuditEntry.details).where(AuditEntry.event == "release.publish")
        ).scalars()
        assert any(hashlib.sha256(good).hexdigest()[:16] in str(d) for d in details)
