"""Request and response bodies of the webhook routes (pydantic, at the HTTP edge)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from bastion import limits
from bastion.server.webhooks.models import Webhook, WebhookDelivery

_URL = Field(max_length=limits.WEBHOOK_URL_MAX_LENGTH)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = _URL
    events: list[str] = Field(min_length=1, max_length=16)


class WebhookPatchIn(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, max_length=limits.WEBHOOK_URL_MAX_LENGTH)
    events: list[str] | None = Field(default=None, min_length=1, max_length=16)
    active: bool | None = None


class WebhookOut(BaseModel):
    id: str
    fleet_id: str
    url: str
    events: list[str]
    active: bool
    created_by: str
    created_at: dt.datetime

    @classmethod
    def of(cls, h: Webhook) -> WebhookOut:
        return cls(
            id=h.id,
            fleet_id=h.fleet_id,
            url=h.url,
            events=h.events.split(","),
            active=h.active,
            created_by=h.created_by,
            created_at=h.created_at,
        )


class WebhookCreatedOut(WebhookOut):
    #: the signing secret: shown this once, stored sealed
    secret: str


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event: str
    status: str
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None

    @classmethod
    def of(cls, d: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=d.id,
            event_id=d.event_id,
            event=d.event,
            status=d.status,
            attempts=d.attempts,
            created_at=d.created_at,
            next_attempt_at=d.next_attempt_at,
            last_attempt_at=d.last_attempt_at,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
        )
