"""Webhooks: a fleet's endpoints, the event source others call, and the signature scheme.

Events (:data:`EVENTS`): ``attestation.failed``, ``attestation.passed`` (a pass after a
failure: "passed again"), ``device.revoked``. Whoever causes one calls
:func:`emit` inside its own transaction::

    from bastion.server.webhooks.service import emit
    emit(session, device.fleet_id, "device.revoked", {"device": device.id}, now)
    session.commit()

:func:`emit` writes one :class:`~.models.WebhookDelivery` per active endpoint of the
fleet that takes the event (an outbox): the event is delivered if and only if the
caller's transaction commits. :mod:`.worker` sends them.

Signature (:func:`sign`, :func:`verify`): headers ``X-Bastion-Timestamp: <unix seconds>``
and ``X-Bastion-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``. The
timestamp is signed, so a receiver refuses a replay older than its tolerance. Secrets
are 32 random bytes (``whsec_`` + base64url), shown once at creation, stored sealed.

Endpoint management is the fleet admin's (create, change, delete: audited); operators
list endpoints and read the delivery log. URLs must be ``https://`` unless the host is
loopback (development and tests).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import (
    ConfigError,
    ExpiredError,
    FormatError,
    LimitError,
    NotFoundError,
    SignatureError,
)
from bastion.io.http import is_loopback
from bastion.server.audit.service import record
from bastion.server.auth.rbac import FleetAccess
from bastion.server.db.base import new_id
from bastion.server.secretbox import SecretBox
from bastion.server.webhooks.models import DeliveryStatus, Webhook, WebhookDelivery

EVENTS = ("attestation.failed", "attestation.passed", "device.revoked")
SIGNATURE_HEADER = "X-Bastion-Signature"
TIMESTAMP_HEADER = "X-Bastion-Timestamp"
EVENT_HEADER = "X-Bastion-Event"
DELIVERY_HEADER = "X-Bastion-Delivery"
SECRET_PREFIX = "whsec_"
#: a receiver refuses signatures older (or newer) than this by default
TOLERANCE_SECONDS = 300


# --- signatures ----------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret (256 random bits)."""
    return SECRET_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 over ``"<timestamp>.<body>"`` with the secret's bytes."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The signature headers for one POST."""
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: int,
    *,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """What a receiver does: SignatureError for a missing or wrong signature,
    ExpiredError for a timestamp outside ``tolerance`` (a replay)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    stamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    given = lowered.get(SIGNATURE_HEADER.lower(), "")
    if not stamp.isdigit() or not given:
        raise SignatureError(f"webhook: {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} missing")
    expected = signature(secret, int(stamp), body)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignatureError("webhook signature does not match the body and timestamp")
    if abs(now - int(stamp)) > tolerance:
        raise ExpiredError(
            f"webhook timestamp {stamp} is {abs(now - int(stamp))} s from now, "
            f"tolerance {tolerance} s"
        )


# --- endpoints -----------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """FormatError unless ``https://`` (or ``http://`` to loopback) with a host."""
    if len(url) > limits.WEBHOOK_URL_MAX_LENGTH:
        raise LimitError(
            f"webhook URL is {len(url)} characters, limit {limits.WEBHOOK_URL_MAX_LENGTH}"
        )
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise FormatError(f"webhook URL {url[:80]!r} is malformed: {exc}") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise FormatError(f"webhook URL {url[:80]!r} must be https://HOST/...")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise FormatError(
            f"webhook URL {url[:80]!r}: plain http:// only to a loopback host; use https://"
        )
    if parts.username or parts.password:
        raise FormatError("webhook URL must not carry a user name or password")
    return url


def check_events(events: Iterable[str]) -> list[str]:
    """The events, deduplicated and sorted; FormatError naming an unknown one."""
    chosen = sorted(set(events))
    if not chosen:
        raise FormatError(f"a webhook needs at least one event of {', '.join(EVENTS)}")
    for name in chosen:
        if name not in EVENTS:
            raise FormatError(f"unknown webhook event {name!r}; known: {', '.join(EVENTS)}")
    return chosen


@dataclass(frozen=True, slots=True)
class Created:
    """A new endpoint and its secret (shown this once)."""

    webhook: Webhook
    secret: str


def create(
    session: Session,
    access: FleetAccess,
    box: SecretBox,
    *,
    url: str,
    events: Iterable[str],
    now: dt.datetime,
) -> Created:
    """Add an endpoint to the fleet (admin; audited)."""
    chosen = check_events(events)
    check_url(url)
    count = len(of_fleet(session, access.fleet_id))
    if count >= limits.WEBHOOKS_PER_FLEET:
        raise LimitError(f"fleet has {count} webhooks, limit {limits.WEBHOOKS_PER_FLEET}")
    secret = new_secret()
    hook = Webhook(
        id=new_id(),
        fleet_id=access.fleet_id,
        url=url,
        events=",".join(chosen),
        active=True,
        created_by=access.principal.actor,
        created_at=now,
    )
    hook.secret = box.seal(secret, f"webhook:{hook.id}")
    session.add(hook)
    record(
        session,
        "webhook.create",
        access.principal.actor,
        {"fleet": access.fleet_id, "webhook": hook.id, "url": url, "events": chosen},
        org_id=access.org_id,
        at=now,
    )
    session.commit()
    return Created(hook, secret)


def of_fleet(session: Session, fleet_id: str) -> list[Webhook]:
    return list(
        session.scalars(
            select(Webhook).where(Webhook.fleet_id == fleet_id).order_by(Webhook.created_at)
        )
    )


def get(session: Session, fleet_id: str, webhook_id: str) -> Webhook:
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.fleet_id != fleet_id:
        raise NotFoundError(f"webhook {webhook_id!r} not found in this fleet")
    return hook


def update(
    session: Session,
    access: FleetAccess,
    webhook_id: str,
    changes: Mapping[str, Any],
    now: dt.datetime,
) -> Webhook:
    """Change url, events or active (admin; audited)."""
    hook = get(session, access.fleet_id, webhook_id)
    if changes.get("url") is not None:
        hook.url = check_url(str(changes["url"]))
    if changes.get("events") is not None:
        hook.events = ",".join(check_events(changes["events"]))
    if changes.get("active") is not None:
        hook.active = bool(changes["active"])
    record(
        session,
        "webhook.update",
        access.principal.actor,
        {"fleet": access.fleet_id, "webhook": hook.id, **{k: v for k, v in changes.items()}},
        org_id=access.org_id,
        at=now,
    )
    session.commit()
    return hook


def delete(session: Session, access: FleetAccess, webhook_id: str, now: dt.datetime) -> None:
    """Remove an endpoint and its delivery log (admin; audited)."""
    hook = get(session, access.fleet_id, webhook_id)
    record(
        session,
        "webhook.delete",
        access.principal.actor,
        {"fleet": access.fleet_id, "webhook": hook.id, "url": hook.url},
        org_id=access.org_id,
        at=now,
    )
    session.delete(hook)
    session.commit()


def deliveries(
    session: Session, fleet_id: str, webhook_id: str, limit: int
) -> list[WebhookDelivery]:
    """The endpoint's newest deliveries first (the delivery log)."""
    hook = get(session, fleet_id, webhook_id)
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == hook.id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
            .limit(min(limit, limits.WEBHOOK_DELIVERIES_PAGE_MAX))
        )
    )


# --- the event source ----------------------------------------------------------------------------


def emit(
    session: Session, fleet_id: str, event: str, data: Mapping[str, Any], now: dt.datetime
) -> int:
    """Queue ``event`` for every active endpoint of the fleet that takes it, in the
    caller's transaction (not committed here). Returns how many deliveries were queued."""
    if event not in EVENTS:
        raise ConfigError(f"unknown webhook event {event!r}")
    hooks = [h for h in of_fleet(session, fleet_id) if h.active and event in h.events.split(",")]
    if not hooks:
        return 0
    event_id = new_id()
    body = json.dumps(
        {
            "id": event_id,
            "type": event,
            "fleet": fleet_id,
            "at": now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "data": dict(data),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    if len(body.encode()) > limits.WEBHOOK_EVENT_MAX_SIZE:
        raise FormatError(
            f"webhook event {event} is {len(body.encode())} bytes, limit "
            f"{limits.WEBHOOK_EVENT_MAX_SIZE}"
        )
    for hook in hooks:
        session.add(
            WebhookDelivery(
                id=new_id(),
                webhook_id=hook.id,
                fleet_id=fleet_id,
                event_id=event_id,
                event=event,
                body=body,
                created_at=now,
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
            )
        )
    return len(hooks)
