"""Pydantic bodies of the agent routes (heartbeat, presence)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from bastion.server.agent.models import DevicePresence


class HeartbeatIn(BaseModel):
    """What the agent says about itself on each heartbeat."""

    model_config = ConfigDict(extra="forbid")

    agent_version: str | None = Field(default=None, max_length=64)
    os_version: str | None = Field(default=None, max_length=256)
    slot: str | None = Field(default=None, max_length=16, pattern=r"^[A-Za-z0-9_.-]*$")
    uptime_seconds: int | None = Field(default=None, ge=0, le=2**31 - 1)
    log_backlog: int | None = Field(default=None, ge=0, le=2**31 - 1)


class HeartbeatOut(BaseModel):
    """The server's answer: its clock and the commands waiting for this device."""

    server_time: dt.datetime
    pending_commands: int


class PresenceOut(BaseModel):
    """A device's presence as operators see it."""

    device_id: str
    connected: bool
    connected_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    agent_version: str | None
    os_version: str | None
    slot: str | None
    uptime_seconds: int | None
    log_backlog: int | None

    @classmethod
    def of(cls, row: DevicePresence | None, device_id: str) -> PresenceOut:
        if row is None:
            return cls(
                device_id=device_id,
                connected=False,
                connected_at=None,
                heartbeat_at=None,
                agent_version=None,
                os_version=None,
                slot=None,
                uptime_seconds=None,
                log_backlog=None,
            )
        return cls(
            device_id=device_id,
            connected=row.connected,
            connected_at=row.connected_at,
            heartbeat_at=row.heartbeat_at,
            agent_version=row.agent_version,
            os_version=row.os_version,
            slot=row.slot,
            uptime_seconds=row.uptime_seconds,
            log_backlog=row.log_backlog,
        )


class RotateIn(BaseModel):
    """A new identity key with its CSR and the enrolled AK's certify of it (base64/PEM)."""

    model_config = ConfigDict(extra="forbid")

    key_public: str = Field(max_length=4096)
    csr: str = Field(max_length=16384)
    certify_attest: str = Field(max_length=4096)
    certify_signature: str = Field(max_length=4096)


class CertificateOut(BaseModel):
    """The device's current certificate and the CA that issued it (PEM)."""

    certificate: str
    ca_certificate: str
