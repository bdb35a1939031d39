"""Authorization-matrix rows for a fleet's EK trust: EK policy, EK CA store, EK deny-list.

Standard fleet levels (viewer reads; owner sets the policy; admin adds/removes CAs and
lifts denials; operator denies). The policy row keeps fleet A a development fleet so
the device principals stay enrollable.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from server_authz import Row, World


def _ca_pem() -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"ca-{secrets.token_hex(4)}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _new_ca_body(_world: World, _who: str) -> dict[str, Any]:
    return {"body": {"certificate": _ca_pem()}}


def _stored_ca(world: World, _who: str) -> dict[str, Any]:
    ca = world.post(
        "org_owner", f"/v1/fleets/{world.vars['fleet']}/ek-cas", {"certificate": _ca_pem()}
    )
    return {"ekca": ca["id"]}


def _deny_body(_world: World, _who: str) -> dict[str, Any]:
    return {"body": {"ek_sha256": secrets.token_hex(32), "reason": "matrix"}}


def _denied(world: World, _who: str) -> dict[str, Any]:
    ek = secrets.token_hex(32)
    world.post("org_owner", f"/v1/fleets/{world.vars['fleet']}/ek-denylist", {"ek_sha256": ek})
    return {"ek": ek}


ROWS = [
    Row("GET", "/v1/fleets/{fleet}/ek-policy", "viewer"),
    Row("PUT", "/v1/fleets/{fleet}/ek-policy", "owner", body={"ek_policy": "any"}),
    Row("GET", "/v1/fleets/{fleet}/ek-cas", "viewer"),
    Row("POST", "/v1/fleets/{fleet}/ek-cas", "admin", 201, setup=_new_ca_body),
    Row("DELETE", "/v1/fleets/{fleet}/ek-cas/{ekca}", "admin", 204, setup=_stored_ca),
    Row("GET", "/v1/fleets/{fleet}/ek-denylist", "viewer"),
    Row("POST", "/v1/fleets/{fleet}/ek-denylist", "operator", 201, setup=_deny_body),
    Row("DELETE", "/v1/fleets/{fleet}/ek-denylist/{ek}", "admin", 204, setup=_denied),
]
