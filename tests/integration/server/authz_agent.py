"""Authorization-matrix rows for the device agent and remote control (server/agent,
server/channel). The heartbeat is any device's own; presence and command lists are a
viewer's; queueing and cancelling commands an operator's. The WebSocket channel is not
an HTTP route: test_agent.py proves it refuses anything but a signed device upgrade."""

from __future__ import annotations

from typing import Any

from server_authz import Row, World


def _device(world: World, _who: str) -> dict[str, Any]:
    return {"device": world.vars["device"]}


def _command(world: World, _who: str) -> dict[str, Any]:
    fleet, device = world.vars["fleet"], world.vars["device"]
    row = world.post(
        "org_owner", f"/v1/fleets/{fleet}/devices/{device}/commands", {"kind": "check-update"}
    )
    return {"device": device, "command": row["id"]}


_BASE = "/v1/fleets/{fleet}/devices/{device}"

ROWS = [
    Row("POST", "/v1/device/heartbeat", "device", body={"slot": "A"}),
    Row("GET", "/v1/device/certificate", "device"),
    # past authentication and the attestation gate, a device's malformed CSR is a 400
    Row(
        "POST",
        "/v1/device/identity/rotate",
        "device",
        400,
        body={"key_public": "", "csr": "no", "certify_attest": "", "certify_signature": ""},
    ),
    Row("GET", _BASE + "/presence", "viewer", setup=_device),
    Row("POST", _BASE + "/commands", "operator", 201, body={"kind": "check-update"}, setup=_device),
    Row("GET", _BASE + "/commands", "viewer", setup=_device),
    Row("GET", _BASE + "/commands/{command}", "viewer", setup=_command),
    Row("POST", _BASE + "/commands/{command}/cancel", "operator", setup=_command),
]
