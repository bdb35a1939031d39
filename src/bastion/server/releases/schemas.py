"""HTTP shapes of releases (pydantic only at the edge)."""

from __future__ import annotations

import datetime as dt
import json

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits
from bastion.server.releases.models import Release


class ReleaseOut(BaseModel):
    """A release as operators see it."""

    id: str
    fleet_id: str
    version: str
    compatible: str
    svn: int
    sha256: str
    length: int
    source: str
    url: str | None
    signer: str | None
    golden_pcrs: dict[str, str] | None
    created_by: str
    created_at: dt.datetime

    @classmethod
    def of(cls, r: Release) -> ReleaseOut:
        return cls(
            id=r.id,
            fleet_id=r.fleet_id,
            version=r.version,
            compatible=r.compatible,
            svn=r.svn,
            sha256=r.sha256,
            length=r.length,
            source=r.source,
            url=r.url,
            signer=r.signer,
            golden_pcrs=json.loads(r.golden_pcrs) if r.golden_pcrs else None,
            created_by=r.created_by,
            created_at=r.created_at,
        )


class ExternalReleaseIn(BaseModel):
    """A bundle served from an external HTTP/CDN URL."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=limits.RELEASE_URL_MAX_LENGTH)
    length: int = Field(gt=0, le=limits.RELEASE_BUNDLE_MAX_SIZE)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    version: str = Field(min_length=1, max_length=limits.RELEASE_VERSION_MAX_LENGTH)
    compatible: str = Field(min_length=1, max_length=limits.RELEASE_COMPATIBLE_MAX_LENGTH)
    svn: int = Field(default=0, ge=0, lt=2**32)


class KeyringIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keyring: str = Field(min_length=1, max_length=limits.RELEASE_KEYRING_MAX_SIZE)


class KeyringOut(BaseModel):
    keyring: str
    updated_by: str
    updated_at: dt.datetime


class GoldenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: base64 of a golden-values statement signed with the fleet's product key
    statement: str = Field(min_length=1, max_length=2 * limits.ATTEST_GOLDEN_MAX_SIZE)


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release_id: str | None = Field(max_length=32)


class TargetOut(BaseModel):
    """The fleet's target release (null: none)."""

    release: ReleaseOut | None
