"""HTTP shapes of rollouts, device targets and update reports (pydantic at the edge)."""

from __future__ import annotations

import base64
import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits
from bastion.server.releases.models import ReleaseSource
from bastion.server.rollouts.models import Rollout, RolloutDevice, UpdateReport
from bastion.server.rollouts.service import (
    TAG_PATTERN,
    ReportOutcome,
    RolloutView,
    Target,
    WaveSpec,
    WaveView,
)


class WaveIn(BaseModel):
    """One wave: exactly one of ``percent``, ``tag``, ``devices``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=limits.ROLLOUT_WAVE_NAME_MAX_LENGTH)
    canary: bool = False
    percent: int | None = Field(default=None, ge=1, le=100)
    tag: str | None = Field(default=None, pattern=TAG_PATTERN)
    devices: list[str] = Field(default_factory=list, max_length=limits.ROLLOUT_WAVE_MAX_DEVICES)
    success_percent: int = Field(default=100, ge=0, le=100)
    failure_percent: int = Field(default=0, ge=0, le=100)

    def spec(self) -> WaveSpec:
        return WaveSpec(
            self.name,
            self.canary,
            self.percent,
            self.tag,
            tuple(self.devices),
            self.success_percent,
            self.failure_percent,
        )


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release_id: str = Field(min_length=1, max_length=32)
    waves: list[WaveIn] = Field(min_length=1, max_length=limits.ROLLOUT_MAX_WAVES)


class RolloutOut(BaseModel):
    id: str
    fleet_id: str
    release_id: str
    state: str
    active_wave: int
    paused_reason: str | None
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, r: Rollout) -> RolloutOut:
        return cls(
            id=r.id,
            fleet_id=r.fleet_id,
            release_id=r.release_id,
            state=r.state,
            active_wave=r.active_wave,
            paused_reason=r.paused_reason,
            created_by=r.created_by,
            created_at=r.created_at,
            updated_at=r.updated_at,
        )


class WaveOut(BaseModel):
    position: int
    name: str
    canary: bool
    percent: int | None
    tag: str | None
    devices: list[str]
    success_percent: int
    failure_percent: int
    state: str
    assigned: int
    pending: int
    installed: int
    committed: int
    fell_back: int
    failed: int
    acknowledged_failures: int

    @classmethod
    def of(cls, v: WaveView) -> WaveOut:
        p, c = v.plan, v.counts
        return cls(
            position=p.position,
            name=p.name,
            canary=p.canary,
            percent=p.percent,
            tag=p.tag,
            devices=sorted(p.devices),
            success_percent=p.success_percent,
            failure_percent=p.failure_percent,
            state=v.state,
            assigned=c.assigned,
            pending=c.pending,
            installed=c.installed,
            committed=c.committed,
            fell_back=c.fell_back,
            failed=c.failed,
            acknowledged_failures=v.acknowledged,
        )


class ProblemOut(BaseModel):
    """A device that fell back or failed, and why (from its signed report)."""

    device_id: str
    wave: int
    result: str
    reason: str | None
    reported_at: dt.datetime | None

    @classmethod
    def of(cls, d: RolloutDevice) -> ProblemOut:
        return cls(
            device_id=d.device_id,
            wave=d.wave,
            result=d.result,
            reason=d.reason,
            reported_at=d.reported_at,
        )


class RolloutStatusOut(RolloutOut):
    version: str
    waves: list[WaveOut]
    problems: list[ProblemOut]

    @classmethod
    def of_view(cls, v: RolloutView) -> RolloutStatusOut:
        base = RolloutOut.of(v.rollout).model_dump()
        return cls(
            **base,
            version=v.release.version,
            waves=[WaveOut.of(w) for w in v.waves],
            problems=[ProblemOut.of(p) for p in v.problems],
        )


class TargetOut(BaseModel):
    """What the device should run (``release`` null: nothing assigned)."""

    release: str | None
    release_id: str | None = None
    svn: int | None = None
    compatible: str | None = None
    sha256: str | None = None
    length: int | None = None
    #: where to fetch the bundle: this server's bundle route, or the external URL
    url: str | None = None
    rollout_id: str | None = None
    wave: int | None = None

    @classmethod
    def of(cls, t: Target) -> TargetOut:
        r = t.release
        if r is None:
            return cls(release=None)
        url = r.url if r.source == ReleaseSource.URL else f"/v1/device/update/bundle/{r.id}"
        return cls(
            release=r.version,
            release_id=r.id,
            svn=r.svn,
            compatible=r.compatible,
            sha256=r.sha256,
            length=r.length,
            url=url,
            rollout_id=t.rollout_id,
            wave=t.wave,
        )


class NonceOut(BaseModel):
    nonce: str  # base64
    expires_at: dt.datetime


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: base64 of the signed report (bastion.formats.update_report.SignedReport)
    report: str = Field(min_length=1, max_length=2 * limits.UPDATE_REPORT_MAX_SIZE)

    def raw(self) -> bytes:
        import binascii

        from bastion.errors import FormatError

        try:
            return base64.b64decode(self.report, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FormatError(f"report is not base64: {exc}") from exc


class ReportOut(BaseModel):
    """A verified report as stored."""

    id: int
    device_id: str
    version: str
    slot: str
    svn: int
    result: str
    reason: str
    tpm_clock: int
    rollout_id: str | None
    at: dt.datetime

    @classmethod
    def of(cls, r: UpdateReport) -> ReportOut:
        return cls(
            id=r.id,
            device_id=r.device_id,
            version=r.version,
            slot=r.slot,
            svn=r.svn,
            result=r.result,
            reason=r.reason,
            tpm_clock=r.tpm_clock,
            rollout_id=r.rollout_id,
            at=r.at,
        )


class ReportAcceptedOut(ReportOut):
    rollout_state: str | None

    @classmethod
    def of_outcome(cls, o: ReportOutcome) -> ReportAcceptedOut:
        return cls(
            **ReportOut.of(o.report).model_dump(),
            rollout_state=o.rollout.state if o.rollout else None,
        )


class TagsOut(BaseModel):
    tags: list[str]
