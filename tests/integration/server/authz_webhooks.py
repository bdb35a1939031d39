"""Authorization-matrix rows for webhooks (server/webhooks).

Operators list endpoints and read the delivery log; admins create, change and delete.
"""

from __future__ import annotations

from typing import Any

from server_authz import OK, Row, World, all_levels

_URL = "https://hooks.example.org/bastion"


def add_principals(world: World) -> None:
    row = world.post(
        "org_owner",
        f"/v1/fleets/{world.vars['fleet']}/webhooks",
        {"url": _URL, "events": ["device.revoked"]},
    )
    world.vars["webhook"] = row["id"]


def _body(world: World, _who: str) -> dict[str, Any]:
    return {"body": {"url": f"{_URL}/{world.unique('h')}", "events": ["attestation.failed"]}}


def _to_delete(world: World, who: str) -> dict[str, Any]:
    """A fresh endpoint when ``who`` may delete it, else one fixed endpoint."""
    if all_levels()["admin"][who] != OK and "webhook_fixed" in world.vars:
        return {"hook": world.vars["webhook_fixed"]}
    row = world.post(
        "org_owner",
        f"/v1/fleets/{world.vars['fleet']}/webhooks",
        {"url": f"{_URL}/{world.unique('d')}", "events": ["device.revoked"]},
    )
    if all_levels()["admin"][who] != OK:
        world.vars["webhook_fixed"] = row["id"]
    return {"hook": row["id"]}


ROWS = [
    Row("GET", "/v1/fleets/{fleet}/webhooks", "operator"),
    Row("POST", "/v1/fleets/{fleet}/webhooks", "admin", 201, setup=_body),
    Row(
        "PATCH",
        "/v1/fleets/{fleet}/webhooks/{webhook}",
        "admin",
        body={"active": True},
    ),
    Row("DELETE", "/v1/fleets/{fleet}/webhooks/{hook}", "admin", 204, setup=_to_delete),
    Row("GET", "/v1/fleets/{fleet}/webhooks/{webhook}/deliveries", "operator"),
]
