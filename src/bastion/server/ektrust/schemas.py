"""Request and response bodies of the EK trust routes (pydantic, at the HTTP edge only)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits
from bastion.server.ektrust.models import DeniedEk, FleetEkCa
from bastion.server.ektrust.policy import EkPolicy, warning_for


class EkPolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ek_policy: EkPolicy


class EkPolicyOut(BaseModel):
    fleet_id: str
    ek_policy: EkPolicy
    #: set (and loud) for a development fleet (``any``)
    warning: str | None = None

    @classmethod
    def of(cls, fleet_id: str, policy: str) -> EkPolicyOut:
        return cls(fleet_id=fleet_id, ek_policy=EkPolicy(policy), warning=warning_for(policy))


class EkCaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    certificate: str = Field(min_length=10, max_length=limits.EK_CA_MAX_PEM)
    name: str | None = Field(default=None, min_length=1, max_length=limits.NAME_MAX_LENGTH)


class EkCaOut(BaseModel):
    id: str
    fleet_id: str
    name: str
    subject: str
    sha256: str
    not_after: dt.datetime
    added_by: str
    added_at: dt.datetime
    certificate: str

    @classmethod
    def of(cls, row: FleetEkCa) -> EkCaOut:
        return cls(
            id=row.id,
            fleet_id=row.fleet_id,
            name=row.name,
            subject=row.subject,
            sha256=row.sha256,
            not_after=row.not_after,
            added_by=row.added_by,
            added_at=row.added_at,
            certificate=row.certificate,
        )


class DeniedEkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ek_sha256: str = Field(min_length=64, max_length=64, pattern=r"^[0-9a-fA-F]{64}$")
    reason: str = Field(default="", max_length=256)


class DeniedEkOut(BaseModel):
    fleet_id: str
    ek_sha256: str
    reason: str
    device_id: str | None
    created_by: str
    created_at: dt.datetime

    @classmethod
    def of(cls, row: DeniedEk) -> DeniedEkOut:
        return cls(
            fleet_id=row.fleet_id,
            ek_sha256=row.ek_hash,
            reason=row.reason,
            device_id=row.device_id,
            created_by=row.created_by,
            created_at=row.created_at,
        )
