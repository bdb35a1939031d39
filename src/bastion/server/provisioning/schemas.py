"""Request and response bodies of the provisioning-key routes (pydantic)."""

from __future__ import annotations

import datetime as dt
import json

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits
from bastion.server.provisioning.models import ProvisioningKey


class AllowedDevice(BaseModel):
    """One allow-list entry naming a device by serial and EK together."""

    model_config = ConfigDict(extra="forbid")

    serial: str = Field(min_length=1, max_length=limits.ENROLL_MAX_SERIAL_LENGTH)
    ek_sha256: str = Field(min_length=64, max_length=64, pattern=r"^[0-9a-fA-F]{64}$")


class ProvisioningKeyIn(BaseModel):
    """What to create: lifetime (default 1 h), uses, rate limit and allow-lists."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=limits.NAME_MAX_LENGTH)
    ttl_seconds: int = Field(default=3600, ge=1, le=limits.PROVISIONING_KEY_MAX_TTL_SECONDS)
    max_uses: int = Field(default=1, ge=1, le=limits.PROVISIONING_KEY_MAX_USES)
    rate_per_minute: int = Field(default=600, ge=0, le=1_000_000)
    allow_serials: list[str] = Field(
        default_factory=list, max_length=limits.PROVISIONING_KEY_MAX_ALLOWLIST
    )
    allow_ek_hashes: list[str] = Field(
        default_factory=list, max_length=limits.PROVISIONING_KEY_MAX_ALLOWLIST
    )
    #: entries naming both a serial and an EK: the device must match both of one entry
    allow_devices: list[AllowedDevice] = Field(
        default_factory=list, max_length=limits.PROVISIONING_KEY_MAX_ALLOWLIST
    )


class ProvisioningKeyOut(BaseModel):
    """A provisioning key's metadata (never the key)."""

    id: str
    fleet_id: str
    name: str
    prefix: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime
    max_uses: int
    uses: int
    rate_per_minute: int
    revoked: bool
    allow_serials: list[str]
    allow_ek_hashes: list[str]
    allow_devices: list[AllowedDevice] = Field(default_factory=list)

    @classmethod
    def of(cls, k: ProvisioningKey) -> ProvisioningKeyOut:
        return cls(
            id=k.id,
            fleet_id=k.fleet_id,
            name=k.name,
            prefix=k.display_prefix,
            created_by=k.created_by,
            created_at=k.created_at,
            expires_at=k.expires_at,
            max_uses=k.max_uses,
            uses=k.uses,
            rate_per_minute=k.rate_per_minute,
            revoked=k.revoked_at is not None,
            allow_serials=json.loads(k.allow_serials),
            allow_ek_hashes=json.loads(k.allow_ek_hashes),
            allow_devices=[
                AllowedDevice(serial=s, ek_sha256=h) for s, h in json.loads(k.allow_devices or "[]")
            ],
        )


class ProvisioningKeyCreatedOut(ProvisioningKeyOut):
    """The new key's metadata and, this one time only, the key itself."""

    key: str
