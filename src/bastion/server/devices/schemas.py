"""Request and response bodies of the device and operator device routes (pydantic)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits
from bastion.server.devices.models import Device
from bastion.server.devices.repository import DeviceRow

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class DeviceOut(BaseModel):
    """A device record (what the device itself and fleet viewers may read)."""

    id: str
    fleet_id: str
    serial: str
    status: str
    cert_serial: str
    api_key_prefix: str
    os_version: str | None
    agent_version: str | None
    note: str | None
    created_at: dt.datetime
    last_seen_at: dt.datetime | None
    revoked_at: dt.datetime | None
    #: how the EK was trusted at enrolment: certified | allow-list | any (development)
    ek_trust: str | None = None

    @classmethod
    def of(cls, d: Device | DeviceRow) -> DeviceOut:
        """From the ORM row or the heartbeat's plain row: each field of this model is a
        column of both, by the same name (``DeviceRow`` lists them first; a test keeps
        the two in step)."""
        return cls(**{name: getattr(d, name) for name in DeviceOut.model_fields})


class DeviceDetailOut(DeviceOut):
    """A device as operators see it: plus certificate, EK hash and env overrides."""

    certificate: str
    ek_sha256: str
    env: dict[str, str]


class DevicePatchIn(BaseModel):
    """The only fields a device may change about itself; anything else is refused (422)."""

    model_config = ConfigDict(extra="forbid")

    os_version: str | None = Field(default=None, max_length=limits.DEVICE_MAX_FIELD_LENGTH)
    agent_version: str | None = Field(default=None, max_length=limits.DEVICE_MAX_FIELD_LENGTH)
    note: str | None = Field(default=None, max_length=limits.DEVICE_MAX_FIELD_LENGTH)


class DeviceConfigOut(BaseModel):
    """Fleet config and env with this device's overrides applied."""

    fleet_id: str
    config: dict[str, Any]
    env: dict[str, str]
    overridden: list[str]


class LogsIn(BaseModel):
    """Log lines from the device."""

    model_config = ConfigDict(extra="forbid")

    lines: list[str] = Field(min_length=1, max_length=limits.HTTP_MAX_LOG_LINES)


class EventIn(BaseModel):
    """One event: a type and a small JSON object."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=limits.NAME_MAX_LENGTH)
    data: dict[str, Any] = Field(default_factory=dict)


class EventsIn(BaseModel):
    """Events from the device."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1, max_length=limits.DEVICE_MAX_EVENTS_PER_POST)


class AcceptedOut(BaseModel):
    """How many records were stored."""

    accepted: int


class EnvValueIn(BaseModel):
    """The value of a per-device environment override."""

    model_config = ConfigDict(extra="forbid")

    value: str = Field(max_length=limits.DEVICE_MAX_ENV_VALUE)


class LogRecordOut(BaseModel):
    """One stored log line; ``id`` is the cursor for the next page (``since``)."""

    id: int
    at: dt.datetime
    line: str


class EventRecordOut(BaseModel):
    """One stored event (``bastion.records_dropped`` marks records dropped by the quota)."""

    id: int
    at: dt.datetime
    type: str
    data: dict[str, Any]


class LogPageOut(BaseModel):
    """A page of log lines, oldest first; pass ``next`` as ``since`` for the next page."""

    records: list[LogRecordOut]
    next: int


class EventPageOut(BaseModel):
    """A page of events, oldest first; pass ``next`` as ``since`` for the next page."""

    records: list[EventRecordOut]
    next: int
