"""Pydantic bodies of the command routes."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits
from bastion.server.channel.models import DeviceCommand


class CommandIn(BaseModel):
    """An operator's command for one device."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(max_length=32)
    args: dict[str, Any] = Field(default_factory=dict)
    ttl_seconds: int = Field(
        default=limits.COMMAND_TTL_DEFAULT_SECONDS, ge=1, le=limits.COMMAND_TTL_MAX_SECONDS
    )
    #: wipe only: the device id again
    confirm: str | None = Field(default=None, max_length=64)


class CommandOut(BaseModel):
    """A command and, once the device answered, its result."""

    id: str
    device_id: str
    kind: str
    args: dict[str, Any]
    status: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime
    sent_at: dt.datetime | None
    finished_at: dt.datetime | None
    output: str | None

    @classmethod
    def of(cls, row: DeviceCommand) -> CommandOut:
        return cls(
            id=row.id,
            device_id=row.device_id,
            kind=row.kind,
            args=json.loads(row.args),
            status=row.status,
            created_by=row.created_by,
            created_at=row.created_at,
            expires_at=row.expires_at,
            sent_at=row.sent_at,
            finished_at=row.finished_at,
            output=row.output,
        )


def wire(row: DeviceCommand) -> dict[str, Any]:
    """The ``command`` message the channel sends to the device."""
    return {
        "type": "command",
        "id": row.id,
        "kind": row.kind,
        "args": json.loads(row.args),
        "expires_at": int(row.expires_at.timestamp()),
    }
