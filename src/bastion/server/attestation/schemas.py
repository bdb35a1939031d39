"""Request and response bodies of the attestation routes (pydantic, at the HTTP edge)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits
from bastion.server.attestation.models import AttestationVerdict, FleetGolden
from bastion.server.attestation.service import Challenge, Settings


class ChallengeOut(BaseModel):
    nonce: str  # base64
    pcr_selection: str
    expires_at: dt.datetime

    @classmethod
    def of(cls, c: Challenge) -> ChallengeOut:
        return cls(
            nonce=base64.b64encode(c.nonce).decode(),
            pcr_selection=c.selection,
            expires_at=c.expires_at,
        )


class EvidenceIn(BaseModel):
    """``evidence`` is the verifier's own JSON format (trust/verdict.py), checked there."""

    model_config = ConfigDict(extra="forbid")
    evidence: dict[str, Any]


class FailureOut(BaseModel):
    id: str
    detail: str


class VerdictOut(BaseModel):
    id: int
    device_id: str
    at: dt.datetime
    ok: bool
    failures: list[FailureOut]
    release: str | None
    security_version: int | None

    @classmethod
    def of(cls, v: AttestationVerdict) -> VerdictOut:
        return cls(
            id=v.id,
            device_id=v.device_id,
            at=v.at,
            ok=v.ok,
            failures=[FailureOut(**f) for f in json.loads(v.failures)],
            release=v.release,
            security_version=v.security_version,
        )


class SettingsIn(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(extra="forbid")
    gating: bool | None = None
    interval_seconds: int | None = Field(default=None, ge=60, le=30 * 86400)
    svn_floor: int | None = Field(default=None, ge=0, le=2**32 - 1)
    pcr_selection: str | None = Field(default=None, max_length=64)
    posture_policy: dict[str, Any] | None = None
    product_key: str | None = Field(default=None, max_length=limits.KEY_FILE_MAX_SIZE)


class SettingsOut(BaseModel):
    fleet_id: str
    gating: bool
    enforced: bool
    interval_seconds: int
    svn_floor: int
    pcr_selection: str
    posture_policy: dict[str, Any]
    product_key: str | None
    golden_count: int

    @classmethod
    def of(cls, s: Settings) -> SettingsOut:
        return cls(
            fleet_id=s.fleet_id,
            gating=s.gating,
            enforced=s.enforced,
            interval_seconds=s.interval_seconds,
            svn_floor=s.svn_floor,
            pcr_selection=s.pcr_selection,
            posture_policy=s.posture_policy.to_json(),
            product_key=s.product_key,
            golden_count=s.golden_count,
        )


class GoldenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: the signed golden-values statement (``bastion image golden``), base64
    statement: str = Field(max_length=(limits.ATTEST_GOLDEN_MAX_SIZE + 2) // 3 * 4)


class GoldenOut(BaseModel):
    id: str
    sha256: str
    version: str
    security_version: int
    added_by: str
    added_at: dt.datetime

    @classmethod
    def of(cls, g: FleetGolden) -> GoldenOut:
        return cls(
            id=g.id,
            sha256=g.sha256,
            version=g.version,
            security_version=g.security_version,
            added_by=g.added_by,
            added_at=g.added_at,
        )
