"""Authorization-matrix rows for remote attestation (server/attestation).

Device routes: only a device (each attests itself). Fleet settings and golden values:
viewers read, admins change. Fleet A gets a product key with gating off, so adding
golden values in the rows never locks the matrix's device principals out of config.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from server_authz import OK, Row, World, all_levels

_PRODUCT: list[Any] = []


def _signer() -> Any:
    if not _PRODUCT:
        from bastion.trust.keys import KeyAlgorithm, generate_private_key
        from bastion.trust.signer import SoftwareSigner

        _PRODUCT.append(SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256)))
    return _PRODUCT[0]


def _statement(version: str) -> str:
    from tests.attestkit import boot_events, golden_of

    from bastion.trust.verdict import sign_golden

    raw = sign_golden(golden_of(boot_events(), version=version), _signer())
    return base64.b64encode(raw).decode()


def add_principals(world: World) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = (
        _signer()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    world.put(
        "org_owner",
        f"/v1/fleets/{world.vars['fleet']}/attestation",
        {"product_key": pem, "gating": False},
    )


def _evidence(world: World, who: str) -> dict[str, Any]:
    """A device opens a challenge first; the evidence parses but does not verify (the
    verdict, ok: false, is still a 200)."""
    if who in ("device", "other_device"):
        world.post(who, "/v1/device/attestation/challenge")
    blob = base64.b64encode(b"\0" * 8).decode()
    evidence = {
        "format": "bastion-evidence/1",
        "ak_public": blob,
        "quote": blob,
        "signature": blob,
        "bank": "sha256",
        "pcrs": {},
        "eventlog": blob,
        "posture": {},
    }
    return {"body": {"evidence": evidence}}


def _golden_body(world: World, _who: str) -> dict[str, Any]:
    return {"body": {"statement": _statement(world.unique("v") + secrets.token_hex(2))}}


def _stored_golden(world: World, who: str) -> dict[str, Any]:
    """A golden set to delete: a fresh one when ``who`` may delete it, else a fixed one
    (the fleet keeps at most 16)."""
    fleet = world.vars["fleet"]
    if all_levels()["admin"][who] != OK and "golden" in world.vars:
        return {"golden": world.vars["golden"]}
    row = world.post(
        "org_owner",
        f"/v1/fleets/{fleet}/attestation/golden",
        {"statement": _statement(world.unique("del"))},
    )
    if all_levels()["admin"][who] != OK:
        world.vars["golden"] = row["id"]
    return {"golden": row["id"]}


def _verdict_with_log(world: World, _who: str) -> dict[str, Any]:
    """The matrix device's newest verdict, which keeps the (unverifiable) log it sent."""
    verdict = world.post("device", "/v1/device/attestation", _evidence(world, "device")["body"])
    return {"device": world.vars["device"], "verdict": verdict["id"]}


ROWS = [
    Row("POST", "/v1/device/attestation/challenge", "device"),
    Row("POST", "/v1/device/attestation", "device", setup=_evidence),
    Row("GET", "/v1/fleets/{fleet}/attestation", "viewer"),
    Row("PUT", "/v1/fleets/{fleet}/attestation", "admin", body={"interval_seconds": 3600}),
    Row("GET", "/v1/fleets/{fleet}/attestation/golden", "viewer"),
    Row("POST", "/v1/fleets/{fleet}/attestation/golden", "admin", 201, setup=_golden_body),
    Row(
        "DELETE",
        "/v1/fleets/{fleet}/attestation/golden/{golden}",
        "admin",
        204,
        setup=_stored_golden,
    ),
    Row(
        "GET",
        "/v1/fleets/{fleet}/devices/{device}/attestations",
        "viewer",
        setup=lambda w, _p: {"device": w.vars["device"]},
    ),
    Row(
        "GET",
        "/v1/fleets/{fleet}/devices/{device}/attestations/{verdict}/eventlog",
        "viewer",
        setup=_verdict_with_log,
    ),
]
