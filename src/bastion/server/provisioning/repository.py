"""Queries on provisioning keys (no commits: services own the transaction)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bastion.server.provisioning.models import ProvisioningKey


def by_token_hash(session: Session, token_hash: str) -> ProvisioningKey | None:
    return session.execute(
        select(ProvisioningKey).where(ProvisioningKey.token_hash == token_hash)
    ).scalar_one_or_none()


def get(session: Session, key_id: str) -> ProvisioningKey | None:
    return session.get(ProvisioningKey, key_id)


def of_fleet(session: Session, fleet_id: str) -> list[ProvisioningKey]:
    return list(
        session.execute(
            select(ProvisioningKey)
            .where(ProvisioningKey.fleet_id == fleet_id)
            .order_by(ProvisioningKey.created_at, ProvisioningKey.id)
        ).scalars()
    )


def consume_use(session: Session, key_id: str, now: dt.datetime) -> bool:
    """Atomically take one use if the key is still live; False if none was left."""
    result = session.execute(
        update(ProvisioningKey)
        .where(
            ProvisioningKey.id == key_id,
            ProvisioningKey.uses < ProvisioningKey.max_uses,
            ProvisioningKey.revoked_at.is_(None),
            ProvisioningKey.expires_at > now,
        )
        .values(uses=ProvisioningKey.uses + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
