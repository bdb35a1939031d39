"""Provisioning keys: create (token shown once), list, revoke, and resolve a bearer token.

Services own the transaction and write the audit entry in it. The token itself is
returned once by :func:`create` and never stored; only its SHA-256 is.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError, FormatError, NotFoundError
from bastion.server.audit.service import record
from bastion.server.provisioning import repository as repo
from bastion.server.provisioning.models import ProvisioningKey
from bastion.server.provisioning.policy import (
    DEFAULT_TTL,
    PROVISIONING_PREFIX,
    KeyState,
    display_prefix,
    new_token,
    token_hash,
)

DEFAULT_RATE_PER_MINUTE = 600


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What an operator asks for when creating a provisioning key."""

    name: str
    ttl: dt.timedelta = DEFAULT_TTL
    max_uses: int = 1
    rate_per_minute: int = DEFAULT_RATE_PER_MINUTE
    allow_serials: tuple[str, ...] = ()
    allow_ek_hashes: tuple[str, ...] = ()
    allow_devices: tuple[tuple[str, str], ...] = ()

    def check(self) -> None:
        """FormatError (a 400 at the HTTP edge) on values out of range."""
        if not 0 < self.ttl.total_seconds() <= limits.PROVISIONING_KEY_MAX_TTL_SECONDS:
            raise FormatError(
                f"provisioning key lifetime must be 1..{limits.PROVISIONING_KEY_MAX_TTL_SECONDS} s"
            )
        if not 1 <= self.max_uses <= limits.PROVISIONING_KEY_MAX_USES:
            raise FormatError(f"max_uses must be 1..{limits.PROVISIONING_KEY_MAX_USES}")
        if len(self.allow_serials) + len(self.allow_ek_hashes) + len(self.allow_devices) > (
            limits.PROVISIONING_KEY_MAX_ALLOWLIST
        ):
            raise FormatError(
                f"allow-list has more than {limits.PROVISIONING_KEY_MAX_ALLOWLIST} entries"
            )
        for h in (*self.allow_ek_hashes, *(ek for _, ek in self.allow_devices)):
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h.lower()):
                raise FormatError(f"EK hash {h[:20]!r} is not 64 hex digits (sha256)")


def state_of(key: ProvisioningKey) -> KeyState:
    """The pure admission view of a stored key."""
    return KeyState(
        key_id=key.id,
        fleet_id=key.fleet_id,
        expires_at=key.expires_at,
        max_uses=key.max_uses,
        uses=key.uses,
        revoked=key.revoked_at is not None,
        allow_serials=frozenset(json.loads(key.allow_serials)),
        allow_ek_hashes=frozenset(h.lower() for h in json.loads(key.allow_ek_hashes)),
        allow_devices=frozenset(
            (str(s), str(h).lower()) for s, h in json.loads(key.allow_devices or "[]")
        ),
    )


def create(
    session: Session, *, fleet_id: str, org_id: str, actor: str, spec: KeySpec, now: dt.datetime
) -> tuple[str, ProvisioningKey]:
    """Store a new key for ``fleet_id``; returns (token, row). The token is not kept."""
    spec.check()
    token = new_token(PROVISIONING_PREFIX)
    key = ProvisioningKey(
        fleet_id=fleet_id,
        name=spec.name,
        token_hash=token_hash(token),
        display_prefix=display_prefix(token),
        created_by=actor,
        created_at=now,
        expires_at=now + spec.ttl,
        max_uses=spec.max_uses,
        uses=0,
        rate_per_minute=spec.rate_per_minute,
        allow_serials=json.dumps(sorted(set(spec.allow_serials))),
        allow_ek_hashes=json.dumps(sorted({h.lower() for h in spec.allow_ek_hashes})),
        allow_devices=json.dumps(sorted({(s, h.lower()) for s, h in spec.allow_devices})),
    )
    session.add(key)
    session.flush()
    record(
        session,
        "provisioning_key.create",
        actor,
        {
            "fleet": fleet_id,
            "key": key.id,
            "expires_at": key.expires_at.isoformat(),
            "max_uses": key.max_uses,
            "allow_list": len(spec.allow_serials)
            + len(spec.allow_ek_hashes)
            + len(spec.allow_devices),
        },
        org_id=org_id,
        at=now,
    )
    session.commit()
    return token, key


def list_keys(session: Session, fleet_id: str) -> list[ProvisioningKey]:
    """Every key of the fleet (metadata only)."""
    return repo.of_fleet(session, fleet_id)


def revoke(
    session: Session, *, fleet_id: str, org_id: str, key_id: str, actor: str, now: dt.datetime
) -> ProvisioningKey:
    """Revoke a key of ``fleet_id`` (idempotent); NotFoundError for another fleet's key."""
    key = repo.get(session, key_id)
    if key is None or key.fleet_id != fleet_id:
        raise NotFoundError(f"provisioning key {key_id!r} not found in this fleet")
    if key.revoked_at is None:
        key.revoked_at = now
        record(
            session,
            "provisioning_key.revoke",
            actor,
            {"fleet": fleet_id, "key": key.id},
            org_id=org_id,
            at=now,
        )
        session.commit()
    return key


def resolve_token(session: Session, token: str) -> ProvisioningKey:
    """The stored key for a bearer token, or AuthError."""
    key = repo.by_token_hash(session, token_hash(token))
    if key is None:
        raise AuthError("provisioning key is not known")
    return key
