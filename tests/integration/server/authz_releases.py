"""Authorization-matrix rows for releases, rollouts, device update reports and tags.

Fleet A gets a release keyring (admin) and one stored and one external release; the
rollout rows that succeed first abort the fleet's active rollout (one per fleet). The
report row needs a report signed in the reporting device's TPM: the matrix's device
principals were enrolled with throw-away TPMs, so the device rows send the headers of
``reporter``, a device of the same kind (active, fleet A) whose TPM is kept here.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from server_authz import OK, Row, World, all_levels

_OCTET = {"Content-Type": "application/octet-stream"}
_KEYS: list[Any] = []


def _keys() -> Any:
    if not _KEYS:
        from tests.bundlekit import release_keys

        _KEYS.append(release_keys("matrix"))
    return _KEYS[0]


def _bundle(version: str) -> bytes:
    from tests.bundlekit import synthetic_bundle

    return synthetic_bundle(_keys(), 4, version=version, svn=1)


def _fleet(world: World) -> str:
    return world.vars["fleet"]


def _external(world: World, version: str) -> str:
    body = {
        "url": f"https://cdn.example.org/{version}.raucb",
        "length": 4096,
        "sha256": "ab" * 32,
        "version": version,
        "compatible": "bastion-test",
    }
    return str(world.post("org_owner", f"/v1/fleets/{_fleet(world)}/releases/external", body)["id"])


def add_principals(world: World) -> None:
    from cryptography.hazmat.primitives import serialization

    from bastion.device.provision import provision
    from bastion.io.http import HttpClient
    from bastion.tpm.software import SoftwareTpm

    fleet = _fleet(world)
    pem = _keys().ca.public_bytes(serialization.Encoding.PEM).decode()
    world.put("org_owner", f"/v1/fleets/{fleet}/release-keyring", {"keyring": pem})
    stored = world.client.post(
        f"/v1/fleets/{fleet}/releases",
        content=_bundle(world.unique("stored")),
        headers={**world.headers["org_owner"], **_OCTET},
    )
    assert stored.status_code == 201, stored.text
    world.vars["release_id"] = stored.json()["id"]
    world.vars["golden_release"] = _external(world, "golden-release")
    rollout = world.post(
        "org_owner",
        f"/v1/fleets/{fleet}/rollouts",
        {"release_id": world.vars["release_id"], "waves": [{"name": "all", "percent": 100}]},
    )
    world.vars["rollout_id"] = rollout["id"]
    world.vars["tag"] = "matrix-tag"
    # a device whose TPM is kept, to sign real reports
    folder = Path(tempfile.mkdtemp(prefix="authz-reporter-"))
    weakref.finalize(world, shutil.rmtree, folder, True)
    key = world.post(
        "org_owner",
        f"/v1/fleets/{fleet}/provisioning-keys",
        {"name": world.unique("rep"), "max_uses": 1, "ttl_seconds": 86400},
    )["key"]
    tpm = SoftwareTpm(folder / "tpm.state")
    identity = provision(
        tpm, HttpClient.over(world.client), provisioning_key=key, serial=world.unique("reporter")
    )
    world.extra["reporter"] = (tpm, identity)
    world.headers_reporter = {"Authorization": f"Bearer {identity.api_key(tpm)}"}  # type: ignore[attr-defined]


def _upload(world: World, who: str) -> dict[str, Any]:
    return {
        "headers": {**world.headers[who], **_OCTET},
        "content": _bundle(world.unique("up")),
    }


def _external_body(world: World, _who: str) -> dict[str, Any]:
    version = world.unique("ext")
    return {
        "body": {
            "url": f"https://cdn.example.org/{version}.raucb",
            "length": 10,
            "sha256": "cd" * 32,
            "version": version,
            "compatible": "bastion-test",
        }
    }


def _golden(world: World, _who: str) -> dict[str, Any]:
    from authz_attestation import _statement

    return {
        "release_id": world.vars["golden_release"],
        "body": {"statement": _statement("golden-release")},
    }


def _keyring(world: World, _who: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    return {"body": {"keyring": _keys().ca.public_bytes(serialization.Encoding.PEM).decode()}}


def _report(world: World, who: str) -> dict[str, Any]:
    """Device principals: a real signed report with an open nonce (from ``reporter``)."""
    if who not in ("device", "other_device"):
        return {"body": {"report": base64.b64encode(b"{}").decode()}}
    from bastion.device.update.report import ReportFields, build_report
    from bastion.formats.update_report import UpdateResult

    tpm, identity = world.extra["reporter"]
    headers = world.headers_reporter  # type: ignore[attr-defined]
    got = world.client.post("/v1/device/update/report-nonce", headers=headers)
    assert got.status_code == 200, got.text
    fields = ReportFields(identity.device_id, "0.0.1", "a", 1, UpdateResult.COMMITTED)
    signed = build_report(tpm, identity.key, fields, base64.b64decode(got.json()["nonce"]))
    return {"headers": headers, "body": {"report": base64.b64encode(signed).decode()}}


def _abort_active(world: World) -> None:
    fleet = _fleet(world)
    for r in world.client.get(
        f"/v1/fleets/{fleet}/rollouts", headers=world.headers["org_owner"]
    ).json():
        if r["state"] in ("running", "paused"):
            world.post("org_owner", f"/v1/fleets/{fleet}/rollouts/{r['id']}/abort")


def _start_body(world: World, who: str) -> dict[str, Any]:
    if all_levels()["operator"][who] == OK:
        _abort_active(world)
    waves = [{"name": "all", "percent": 100}]
    return {"body": {"release_id": world.vars["release_id"], "waves": waves}}


def _rollout_in(state: str) -> Any:
    """A fresh rollout in ``state`` for a principal that may act on it."""

    def setup(world: World, who: str) -> dict[str, Any]:
        if all_levels()["operator"][who] != OK:
            return {}
        _abort_active(world)
        fleet = _fleet(world)
        made = world.post(
            "org_owner",
            f"/v1/fleets/{fleet}/rollouts",
            {"release_id": world.vars["release_id"], "waves": [{"name": "w", "percent": 100}]},
        )
        if state == "paused":
            world.post("org_owner", f"/v1/fleets/{fleet}/rollouts/{made['id']}/pause")
        return {"rollout_id": made["id"]}

    return setup


def _tag_to_remove(world: World, who: str) -> dict[str, Any]:
    tag = world.unique("t").lower()
    response = world.client.put(
        f"/v1/fleets/{_fleet(world)}/devices/{world.vars['device']}/tags/{tag}",
        headers=world.headers["org_owner"],
    )
    assert response.status_code == 204, response.text
    del who
    return {"tag": tag}


_DEV = "/v1/fleets/{fleet}/devices/{device}"
_ROLL = "/v1/fleets/{fleet}/rollouts/{rollout_id}"

ROWS = [
    Row("POST", "/v1/fleets/{fleet}/releases", "operator", 201, setup=_upload),
    Row("POST", "/v1/fleets/{fleet}/releases/external", "operator", 201, setup=_external_body),
    Row("GET", "/v1/fleets/{fleet}/releases", "viewer"),
    Row("GET", "/v1/fleets/{fleet}/releases/{release_id}", "viewer"),
    Row("PUT", "/v1/fleets/{fleet}/releases/{release_id}/golden", "admin", setup=_golden),
    Row("GET", "/v1/fleets/{fleet}/release-keyring", "viewer"),
    Row("PUT", "/v1/fleets/{fleet}/release-keyring", "admin", setup=_keyring),
    Row("GET", "/v1/fleets/{fleet}/target-release", "viewer"),
    Row(
        "PUT",
        "/v1/fleets/{fleet}/target-release",
        "operator",
        setup=lambda w, _p: {"body": {"release_id": w.vars["release_id"]}},
    ),
    Row("GET", "/v1/device/update/bundle/{release_id}", "device"),
    Row("GET", "/v1/device/target-release", "device"),
    Row("POST", "/v1/device/update/report-nonce", "device"),
    Row("POST", "/v1/device/update/report", "device", setup=_report),
    Row("POST", "/v1/fleets/{fleet}/rollouts", "operator", 201, setup=_start_body),
    Row("GET", "/v1/fleets/{fleet}/rollouts", "viewer"),
    Row("GET", _ROLL, "viewer"),
    Row("POST", _ROLL + "/pause", "operator", setup=_rollout_in("running")),
    Row("POST", _ROLL + "/resume", "operator", setup=_rollout_in("paused")),
    Row("POST", _ROLL + "/abort", "operator", setup=_rollout_in("running")),
    Row("GET", _DEV + "/update-reports", "viewer"),
    Row("GET", _DEV + "/tags", "viewer"),
    Row("PUT", _DEV + "/tags/{tag}", "operator", 204),
    Row("DELETE", _DEV + "/tags/{tag}", "operator", 204, setup=_tag_to_remove),
]
