"""Authorization-matrix rows and principals for provisioning, enrolment and device routes.

Principals added to the world (each device enrolled for real with a fresh software TPM
into fleet A, a development fleet (EK policy ``any``); the decrypted device API key is
kept):
``provisioning_key`` (a fleet-A key with uses left), ``device`` and ``other_device``
(two enrolled devices of fleet A), ``revoked_device`` (enrolled, then revoked).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server_authz import _NOT_USER, OK, USERS, Row, World, all_levels

# device routes: only a (non-revoked) device; every device sees only itself
_device: dict[str, int | str] = {name: 403 for name in (*USERS, "read_token")}
_device.update(_NOT_USER)
_device.update({"device": OK, "other_device": OK})
# enrolment routes: only a provisioning key, and it really enrols (2xx with real evidence)
_enrol: dict[str, int | str] = {name: 403 for name in (*USERS, "read_token")}
_enrol.update(_NOT_USER)
_enrol["provisioning_key"] = OK

# public PKI material (CA certificate, CRL): credentials are not even looked at, so a
# revoked device can still fetch the CRL that revokes it
_open: dict[str, int | str] = dict.fromkeys((*USERS, *_NOT_USER, "read_token"), OK)

#: picked up by server_authz.all_levels()
LEVELS = {"device": _device, "enrol": _enrol, "open": _open}


def _enrol_device(world: World, key: str, serial: str) -> tuple[str, dict[str, str]]:
    """Enrol a fresh software TPM (fleet A is a development fleet, EK policy ``any``)."""
    from bastion.device.provision import provision
    from bastion.io.http import HttpClient
    from bastion.tpm.software import SoftwareTpm

    folder = Path(tempfile.mkdtemp(prefix="authz-tpm-"))
    try:
        tpm = SoftwareTpm(folder / "tpm.state")
        identity = provision(
            tpm, HttpClient.over(world.client), provisioning_key=key, serial=serial
        )
        headers = {"Authorization": f"Bearer {identity.api_key(tpm)}"}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return identity.device_id, headers


def _new_key(world: World, uses: int = 100) -> dict[str, Any]:
    return world.post(
        "org_owner",
        f"/v1/fleets/{world.vars['fleet']}/provisioning-keys",
        {"name": world.unique("key"), "max_uses": uses, "ttl_seconds": 86400},
    )


def add_principals(world: World) -> None:
    # fleet A enrols software TPMs: a development fleet, as the demo's
    world.put("org_owner", f"/v1/fleets/{world.vars['fleet']}/ek-policy", {"ek_policy": "any"})
    key = _new_key(world)
    world.vars["pkey"] = key["id"]
    world.extra["pkey_secret"] = key["key"]
    world.headers["provisioning_key"] = {"Authorization": f"Bearer {key['key']}"}
    for name in ("device", "other_device", "revoked_device"):
        device_id, headers = _enrol_device(world, key["key"], world.unique(name))
        world.headers[name] = headers
        world.vars[name] = device_id
    response = world.client.post(
        f"/v1/fleets/{world.vars['fleet']}/devices/{world.vars['revoked_device']}/revoke",
        headers=world.headers["org_owner"],
    )
    assert response.status_code == 200, response.text


def _victim(level: str) -> Any:
    """Setup giving a fresh device to act on when ``who`` is expected to succeed."""

    def setup(world: World, who: str) -> dict[str, Any]:
        if all_levels()[level][who] != OK:
            return {"device": world.vars["device"]}
        device_id, _ = _enrol_device(world, world.extra["pkey_secret"], world.unique("victim"))
        return {"device": device_id}

    return setup


def _new_override(world: World, _who: str) -> dict[str, Any]:
    name = world.unique("OVR").replace("-", "_")
    response = world.client.put(
        f"/v1/fleets/{world.vars['fleet']}/devices/{world.vars['device']}/env/{name}",
        json={"value": "1"},
        headers=world.headers["org_owner"],
    )
    assert response.status_code == 204, response.text
    return {"name": name, "device": world.vars["device"]}


def _fresh_key(world: World, _who: str) -> dict[str, Any]:
    return {"pkey": _new_key(world, 1)["id"]}


@contextmanager
def _enrol_tpm() -> Iterator[Any]:
    """A fresh software TPM that builds real enrolment evidence for the enrol rows (one
    EK may be active in only one device of the fleet); its folder is removed after."""
    from bastion.tpm.software import SoftwareTpm

    folder = Path(tempfile.mkdtemp(prefix="authz-enrol-"))
    try:
        yield SoftwareTpm(folder / "tpm.state")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _begin_body(world: World, _who: str) -> dict[str, Any]:
    """Real evidence from a TPM: a provisioning key gets 200, everyone else is refused."""
    from bastion.device.provision import build_enrollment

    with _enrol_tpm() as tpm:
        _, _, body = build_enrollment(tpm, world.unique("sn"))
    return {"body": body}


def _finish_body(world: World, who: str) -> dict[str, Any]:
    """For the provisioning key a real begin + ActivateCredential + proof (200); for the
    others a well-formed but unknown challenge (refused before it is looked at)."""
    import base64

    from bastion.device.provision import build_enrollment
    from bastion.formats import enrollment as en

    if who != "provisioning_key":
        proof = base64.b64encode(b"\0" * 32).decode()
        return {"body": {"challenge_id": "ch_" + "0" * 32, "proof": proof}}
    with _enrol_tpm() as tpm:
        ak, _, body = build_enrollment(tpm, world.unique("sn"))
        begin = world.client.post("/v1/enroll/begin", json=body, headers=world.headers[who])
        assert begin.status_code == 200, begin.text
        out = begin.json()
        secret = tpm.activate_credential(
            ak, base64.b64decode(out["credential_blob"]), base64.b64decode(out["encrypted_secret"])
        )
    cid = out["challenge_id"]
    proof = base64.b64encode(en.finish_proof(en.derive_keys(secret, cid), cid)).decode()
    return {"body": {"challenge_id": cid, "proof": proof}}


ROWS = [
    Row("GET", "/v1/device", "device"),
    Row("PATCH", "/v1/device", "device", body={"note": "matrix"}),
    Row("GET", "/v1/device/config", "device"),
    Row("GET", "/v1/device/target-release", "device"),
    Row("POST", "/v1/device/logs", "device", body={"lines": ["hello"]}),
    Row("POST", "/v1/device/events", "device", body={"events": [{"type": "boot"}]}),
    Row("GET", "/v1/fleets/{fleet}/devices", "viewer"),
    Row("GET", "/v1/fleets/{fleet}/devices/{device}", "viewer"),
    Row("GET", "/v1/fleets/{fleet}/devices/{device}/logs", "viewer"),
    Row("GET", "/v1/fleets/{fleet}/devices/{device}/events", "viewer"),
    Row(
        "POST", "/v1/fleets/{fleet}/devices/{device}/revoke", "operator", setup=_victim("operator")
    ),
    Row("DELETE", "/v1/fleets/{fleet}/devices/{device}", "admin", 204, setup=_victim("admin")),
    Row(
        "PUT",
        "/v1/fleets/{fleet}/devices/{device}/env/{name}",
        "operator",
        204,
        body={"value": "x"},
        setup=lambda w, _p: {"name": "MATRIX_VAR", "device": w.vars["device"]},
    ),
    Row(
        "DELETE",
        "/v1/fleets/{fleet}/devices/{device}/env/{name}",
        "operator",
        204,
        setup=_new_override,
    ),
    Row("POST", "/v1/fleets/{fleet}/provisioning-keys", "admin", 201, body={"name": "k"}),
    Row("GET", "/v1/fleets/{fleet}/provisioning-keys", "admin"),
    Row("DELETE", "/v1/fleets/{fleet}/provisioning-keys/{pkey}", "admin", 204, setup=_fresh_key),
    Row("POST", "/v1/enroll/begin", "enrol", setup=_begin_body),
    Row("POST", "/v1/enroll/finish", "enrol", setup=_finish_body),
    Row("GET", "/v1/crl", "public"),
    Row("GET", "/v1/ca", "public"),
]
