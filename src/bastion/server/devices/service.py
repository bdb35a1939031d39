"""Devices: the device principal, its own least-privilege operations, operator operations.

Device principal (registered in ``devices/routes.install``):

* ``Authorization: Bearer bst_dev_...`` -> :func:`authenticate_api_key` (SHA-256 lookup);
* a verified mTLS client certificate -> :func:`authenticate_certificate` (SHA-256 of
  the DER certificate must equal the one issued at enrolment).

Both refuse a revoked device (RevokedError -> 401) and a deleted one (AuthError), so
revocation bites on the very next request. Device operations take the device id from
the principal only: a device can never name another device.

Speed (docs/adr/0034-scale-and-webhooks.md, 0043): an API key is authenticated by one
Core statement of the columns the device principal and the heartbeat routes need, a
:class:`~bastion.server.devices.repository.DeviceRow` (no ORM objects). That row is
kept in the session's ``info`` (:func:`authenticated_row`), so :func:`own_row` in the
same request session (the gate, the heartbeat routes) does not read it again, and
:func:`needs_touch` tells from it whether ``last_seen_at`` needs a write at all. Routes
that write the device or read its certificate or keys use :func:`own` (the ORM row: a
certificate's authentication loaded it; after an API key it is one ``session.get``).
Nothing outlives the request's session, except on PostgreSQL the heartbeat routes' kept
answers (:mod:`bastion.server.answers`, ADR 0044). A database trigger notifies every
process of a revocation, deletion or key change, and each process drops the device's
answers when the notification arrives.

Operators (fleet RBAC in the routes): list/show, revoke (status revoked, certificate
serial onto the CRL, API key dead, EK onto the fleet's deny-list), delete (the
certificate onto the CRL, then the row goes; CRL and deny-list entries stay), and
per-device environment overrides. Deleting a fleet puts all its devices on the CRL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError, ConfigError, NotFoundError, RevokedError
from bastion.server.audit.service import record
from bastion.server.auth.principal import Principal, PrincipalKind, Via
from bastion.server.auth.tokens import check_format
from bastion.server.devices import repository as repo
from bastion.server.devices.ca import DeviceCa
from bastion.server.devices.models import (
    Device,
    DeviceEnvVar,
    DeviceRecord,
    DeviceStatus,
    RevokedCertificate,
)
from bastion.server.devices.repository import DeviceRow
from bastion.server.ektrust.service import deny
from bastion.server.provisioning.policy import DEVICE_KEY_PREFIX, token_hash
from bastion.server.webhooks import service as webhooks

if TYPE_CHECKING:
    from bastion.server.context import AppContext

#: fields a device may change about itself (balena: a few own fields)
DEVICE_WRITABLE = ("os_version", "agent_version", "note")
LAST_SEEN_RESOLUTION = dt.timedelta(seconds=60)


#: session.info key of the device this session authenticated: ``(DeviceRow, Device or
#: None)``, the ORM Device being the one a certificate's authentication loaded
_AUTHENTICATED = "bastion.devices.authenticated"


def _principal(session: Session, row: DeviceRow, via: Via, held: Device | None = None) -> Principal:
    if row.status != DeviceStatus.ACTIVE:
        raise RevokedError(f"device {row.id} is revoked")
    # held for the rest of this session: the identity map alone keeps rows only weakly
    session.info[_AUTHENTICATED] = (row, held)
    return Principal(
        kind=PrincipalKind.DEVICE, id=row.id, via=via, org_id=row.org_id, fleet_id=row.fleet_id
    )


def authenticate_api_key(session: Session, token: str, now: dt.datetime) -> Principal:
    """Resolve a ``bst_dev_`` key; AuthError if unknown, RevokedError if revoked.

    One Core statement of the columns a device principal and the heartbeat routes need
    (:class:`~bastion.server.devices.repository.DeviceRow`), no ORM objects."""
    del now
    check_format(token, DEVICE_KEY_PREFIX)
    found = repo.row_by_api_key(session, token_hash(token))
    if found is None:
        raise AuthError("device API key is not known")
    return _principal(session, found, Via.DEVICE_KEY)


def cert_fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the DER certificate."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def authenticate_certificate(
    session: Session, cert: x509.Certificate, now: dt.datetime
) -> Principal:
    """Resolve a verified client certificate to the device it was issued to."""
    del now
    found = repo.with_fleet_by_cert(session, cert_fingerprint(cert))
    if found is None:
        raise AuthError("client certificate belongs to no enrolled device")
    device, fleet = found
    return _principal(session, DeviceRow.of(device, fleet), Via.CERTIFICATE, device)


# --- the device itself ---------------------------------------------------------------------


def authenticated_row(session: Session, device_id: str) -> DeviceRow | None:
    """The row of ``device_id`` if this session authenticated it (else None)."""
    held = session.info.get(_AUTHENTICATED)
    if isinstance(held, tuple) and isinstance(held[0], DeviceRow) and held[0].id == device_id:
        return held[0]
    return None


def _check_own(principal: Principal) -> None:
    if principal.kind is not PrincipalKind.DEVICE:
        raise AuthError("only a device may use this route")


def own_row(session: Session, principal: Principal) -> DeviceRow:
    """The calling device's columns, for routes that only read them (the heartbeat
    routes): the row this session authenticated, else one Core query (it may have been
    deleted since authentication)."""
    _check_own(principal)
    row = authenticated_row(session, principal.id) or repo.row_by_id(session, principal.id)
    if row is None:
        raise AuthError(f"device {principal.id} no longer exists")
    if row.status != DeviceStatus.ACTIVE:
        raise RevokedError(f"device {row.id} is revoked")
    return row


def own(session: Session, principal: Principal) -> Device:
    """The calling device's ORM row, for routes that write it or read columns a
    :class:`DeviceRow` lacks (it may have been deleted since authentication)."""
    _check_own(principal)
    held = session.info.get(_AUTHENTICATED)
    device: Device | None = None
    if isinstance(held, tuple) and isinstance(held[1], Device) and held[1].id == principal.id:
        device = held[1]
    else:
        device = repo.get(session, principal.id)
    if device is None:
        raise AuthError(f"device {principal.id} no longer exists")
    if device.status != DeviceStatus.ACTIVE:
        raise RevokedError(f"device {device.id} is revoked")
    return device


def needs_touch(session: Session, principal: Principal, now: dt.datetime) -> bool:
    """False when the row this session authenticated was seen within the resolution."""
    row = authenticated_row(session, principal.id)
    if row is None or row.last_seen_at is None:
        return True
    return now - row.last_seen_at >= LAST_SEEN_RESOLUTION


def last_seen(session: Session, principal: Principal) -> dt.datetime | None:
    """``last_seen_at`` of the row this session authenticated, as this request left it
    (None: the session authenticated no row of this device, or it was never seen)."""
    row = authenticated_row(session, principal.id)
    return row.last_seen_at if row is not None else None


def mark_seen(session: Session, principal: Principal, now: dt.datetime) -> None:
    """Show the authenticated row as seen at ``now`` in this session, without a write
    (another session committed it)."""
    from sqlalchemy.orm.attributes import set_committed_value

    held = session.info.get(_AUTHENTICATED)
    row = authenticated_row(session, principal.id)
    if row is None or not isinstance(held, tuple):
        return
    device = held[1]
    if isinstance(device, Device):
        set_committed_value(device, "last_seen_at", now)
    session.info[_AUTHENTICATED] = (replace(row, last_seen_at=now), device)


def seen(ctx: AppContext, session: Session, principal: Principal, now: dt.datetime) -> Principal:
    """``principal``, its presence refreshed: every authenticated device request refreshes
    ``last_seen_at``, only when the row this session authenticated says it is older than
    the resolution (a minute); written behind by the answer cache's writer where there
    is one (ADR 0045), else by its own write session."""
    if needs_touch(session, principal, now):
        answers = ctx.answers
        if answers is None or not answers.record_presence(principal.id, now):
            with ctx.db.session(write=True) as write:
                touch(write, principal, now)
        mark_seen(session, principal, now)
    return principal


def signed_in(
    ctx: AppContext, session: Session, principal: Principal, now: dt.datetime
) -> Principal:
    """A device principal whose signature and nonce the hot path checked (ADR 0048),
    authenticated in this session as an API key is (:func:`authenticated_row`), its
    presence refreshed: AuthError if the device is gone, RevokedError if revoked."""
    row = repo.row_by_id(session, principal.id)
    if row is None:
        raise AuthError(f"device {principal.id} no longer exists")
    found = _principal(session, row, principal.via)
    return seen(ctx, session, replace(found, client=principal.client), now)


def touch(session: Session, principal: Principal, now: dt.datetime) -> Device:
    """The device's row, with ``last_seen_at`` refreshed at most once a minute."""
    device = own(session, principal)
    if device.last_seen_at is None or now - device.last_seen_at >= LAST_SEEN_RESOLUTION:
        device.last_seen_at = now
        session.commit()
    return device


def update_own(
    session: Session, principal: Principal, changes: dict[str, str | None], now: dt.datetime
) -> Device:
    """Change the device's own writable fields (others refused before reaching here)."""
    device = own(session, principal)
    for name, value in changes.items():
        if name not in DEVICE_WRITABLE:
            raise AuthError(f"a device may not change {name!r}")
        if value is not None and len(value) > limits.DEVICE_MAX_FIELD_LENGTH:
            raise ConfigError(f"{name} is longer than {limits.DEVICE_MAX_FIELD_LENGTH}")
        setattr(device, name, value)
    device.last_seen_at = now
    session.commit()
    return device


def effective_config(session: Session, principal: Principal) -> dict[str, Any]:
    """The fleet's config and env, with the device's env overrides applied."""
    device = own_row(session, principal)
    env, overrides = repo.fleet_and_device_env(session, device.fleet_id, device.id)
    env.update(overrides)
    return {
        "fleet_id": device.fleet_id,
        "config": json.loads(device.fleet_config or "{}"),
        "env": env,
        "overridden": sorted(overrides),
    }


RECORD_KINDS = ("log", "event")
DROPPED_EVENT = "bastion.records_dropped"
#: room kept for the marker that says records were dropped (bytes; a marker is < 200)
_MARKER_RESERVE = 256


@dataclass(frozen=True, slots=True)
class RecordQuota:
    """Per-device bounds on each kind of record (logs and events separately)."""

    max_count: int = limits.DEVICE_RECORDS_MAX_COUNT
    max_bytes: int = limits.DEVICE_RECORDS_MAX_BYTES
    max_age: dt.timedelta = dt.timedelta(seconds=limits.DEVICE_RECORDS_MAX_AGE_SECONDS)

    @classmethod
    def of(cls, settings: Any) -> RecordQuota:
        """The quota configured in the server settings."""
        return cls(
            settings.device_records_max_count,
            settings.device_records_max_bytes,
            dt.timedelta(seconds=settings.device_records_max_age),
        )


def record_size(body: str) -> int:
    """Bytes a record counts against the quota: its UTF-8 length."""
    return len(body.encode())


def _drop_event(kind: str, count: int, nbytes: int) -> str:
    data = {"kind": kind, "count": count, "bytes": nbytes, "reason": "quota"}
    return json.dumps({"data": data, "type": DROPPED_EVENT}, sort_keys=True)


def _marker(kind: str, count: int, nbytes: int) -> str:
    if kind == "event":
        return _drop_event(kind, count, nbytes)
    return f"[bastion] {count} older log lines ({nbytes} bytes) dropped: device quota"


def _trim(
    session: Session,
    device_id: str,
    kind: str,
    incoming: list[str],
    *,
    quota: RecordQuota,
    now: dt.datetime,
) -> tuple[list[str], int, int]:
    """Make room for ``incoming``: drop the oldest records (then the oldest incoming ones)
    until everything fits with a marker, and add the marker in the same stream.

    Returns what to store, and how many records (and bytes) were dropped in all."""
    sizes = [record_size(b) for b in incoming]
    count, total = repo.usage(session, device_id, kind)
    if count + len(incoming) <= quota.max_count and total + sum(sizes) <= quota.max_bytes:
        return incoming, 0, 0
    room_count = quota.max_count - 1
    room_bytes = quota.max_bytes - _MARKER_RESERVE
    new_count, new_bytes = len(incoming), sum(sizes)
    dropped: list[int] = []
    dropped_bytes = 0
    for rid, size in repo.oldest(session, device_id, kind):
        kept = count - len(dropped)
        if kept + new_count <= room_count and total - dropped_bytes + new_bytes <= room_bytes:
            break
        dropped.append(rid)
        dropped_bytes += size
    repo.delete_records(session, dropped)
    n_dropped = len(dropped)
    kept_count, kept_bytes = count - n_dropped, total - dropped_bytes
    first = 0
    while first < len(incoming) and (
        kept_count + new_count > room_count or kept_bytes + new_bytes > room_bytes
    ):
        new_count -= 1
        new_bytes -= sizes[first]
        dropped_bytes += sizes[first]
        n_dropped += 1
        first += 1
    marker = _marker(kind, n_dropped, dropped_bytes)
    session.add(
        DeviceRecord(device_id=device_id, kind=kind, at=now, body=marker, size=record_size(marker))
    )
    return incoming[first:], n_dropped, dropped_bytes


def _make_room(
    session: Session,
    device_id: str,
    kind: str,
    incoming: list[str],
    *,
    quota: RecordQuota,
    now: dt.datetime,
) -> tuple[list[str], int]:
    """:func:`_trim`, and for dropped log lines also a ``bastion.records_dropped`` event
    in the device's events (itself under the events quota). Returns what to store and
    how many stored records were deleted."""
    keep, dropped, nbytes = _trim(session, device_id, kind, incoming, quota=quota, now=now)
    deleted = dropped - (len(incoming) - len(keep))
    if kind == "log" and dropped:
        event = _drop_event(kind, dropped, nbytes)
        stored, event_dropped, _ = _trim(session, device_id, "event", [event], quota=quota, now=now)
        deleted += event_dropped
        for body in stored:
            session.add(
                DeviceRecord(
                    device_id=device_id, kind="event", at=now, body=body, size=record_size(body)
                )
            )
    return keep, deleted


def append_records(
    session: Session,
    principal: Principal,
    kind: str,
    bodies: list[str],
    now: dt.datetime,
    *,
    quota: RecordQuota | None = None,
) -> int:
    """Store log lines (``kind="log"``) or events (``"event"``) for the calling device.

    Enforces retention (older than ``quota.max_age`` goes) and the per-device quota
    (the oldest records go, and a marker record says how many) before storing.
    """
    quota = quota or RecordQuota()
    device = own(session, principal)
    repo.lock(session, device.id)
    repo.delete_records_before(session, now - quota.max_age, device.id)
    keep, _deleted = _make_room(session, device.id, kind, list(bodies), quota=quota, now=now)
    for body in keep:
        session.add(
            DeviceRecord(device_id=device.id, kind=kind, at=now, body=body, size=record_size(body))
        )
    device.last_seen_at = now
    session.commit()
    return len(bodies)


def sweep_records(session: Session, now: dt.datetime, quota: RecordQuota) -> int:
    """Apply retention to every device, and the quota to any device above it (after the
    limits were lowered, say). Commits; returns how many records were removed."""
    removed = repo.delete_records_before(session, now - quota.max_age)
    for device_id, kind in repo.over_quota(session, quota.max_count, quota.max_bytes):
        repo.lock(session, device_id)
        removed += _make_room(session, device_id, kind, [], quota=quota, now=now)[1]
    session.commit()
    return removed


def read_records(
    session: Session, fleet_id: str, device_id: str, kind: str, *, since: int, limit: int
) -> list[DeviceRecord]:
    """A page of one device's logs or events after the cursor ``since`` (a record id)."""
    device = in_fleet(session, fleet_id, device_id)
    return repo.records_after(session, device.id, kind, since, limit)


# --- operators ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device as operators see it (no key material but the public certificate)."""

    device: Device
    env: dict[str, str]


def in_fleet(session: Session, fleet_id: str, device_id: str) -> Device:
    """The device ``device_id`` of ``fleet_id``; NotFoundError otherwise (no leak)."""
    device = repo.get(session, device_id)
    if device is None or device.fleet_id != fleet_id:
        raise NotFoundError(f"device {device_id!r} not found in this fleet")
    return device


def show(session: Session, fleet_id: str, device_id: str) -> DeviceView:
    device = in_fleet(session, fleet_id, device_id)
    return DeviceView(device, {v.name: v.value for v in repo.env(session, device.id)})


def _revoke_cert(session: Session, device: Device, now: dt.datetime, reason: str) -> None:
    if session.get(RevokedCertificate, device.cert_serial) is None:
        session.add(
            RevokedCertificate(
                serial=device.cert_serial,
                device_id=device.id,
                fleet_id=device.fleet_id,
                revoked_at=now,
                reason=reason,
            )
        )


def revoke(
    session: Session, *, fleet_id: str, org_id: str, device_id: str, actor: str, now: dt.datetime
) -> Device:
    """Revoke a device: refused from its next request on, certificate on the CRL."""
    device = in_fleet(session, fleet_id, device_id)
    if device.status != DeviceStatus.REVOKED:
        device.status = DeviceStatus.REVOKED
        device.revoked_at = now
        _revoke_cert(session, device, now, "revoked")
        deny(
            session,
            fleet_id=fleet_id,
            ek_hash=device.ek_hash,
            reason=f"device {device.id} revoked",
            actor=actor,
            now=now,
            device_id=device.id,
        )
        record(
            session,
            "device.revoke",
            actor,
            {
                "fleet": fleet_id,
                "device": device.id,
                "cert_serial": device.cert_serial,
                "ek_sha256": device.ek_hash,
                "ek_denied": True,
            },
            org_id=org_id,
            at=now,
        )
        webhooks.emit(session, fleet_id, "device.revoked", {"device": device.id}, now)
        session.commit()
    return device


def revoke_all_of_fleet(session: Session, fleet_id: str, now: dt.datetime) -> int:
    """Put every device certificate of the fleet on the CRL (the fleet is being deleted;
    in the caller's transaction). Returns how many devices there were."""
    devices = repo.of_fleet(session, fleet_id)
    for device in devices:
        _revoke_cert(session, device, now, "fleet-deleted")
    return len(devices)


def delete_device(
    session: Session, *, fleet_id: str, org_id: str, device_id: str, actor: str, now: dt.datetime
) -> None:
    """Delete a device; its certificate stays on the CRL."""
    device = in_fleet(session, fleet_id, device_id)
    _revoke_cert(session, device, now, "deleted")
    record(
        session,
        "device.delete",
        actor,
        {"fleet": fleet_id, "device": device.id, "cert_serial": device.cert_serial},
        org_id=org_id,
        at=now,
    )
    session.delete(device)
    session.commit()


def set_env(
    session: Session,
    *,
    fleet_id: str,
    org_id: str,
    device_id: str,
    name: str,
    value: str,
    actor: str,
    now: dt.datetime,
) -> None:
    """Set one per-device environment override."""
    device = in_fleet(session, fleet_id, device_id)
    existing = session.get(DeviceEnvVar, (device.id, name))
    if existing is None:
        if repo.count_env(session, device.id) >= limits.DEVICE_MAX_ENV_VARS:
            raise ConfigError(f"device has {limits.DEVICE_MAX_ENV_VARS} variables already")
        session.add(DeviceEnvVar(device_id=device.id, name=name, value=value))
    else:
        existing.value = value
    record(
        session,
        "device.env.set",
        actor,
        {"fleet": fleet_id, "device": device.id, "name": name},
        org_id=org_id,
        at=now,
    )
    session.commit()


def delete_env(
    session: Session,
    *,
    fleet_id: str,
    org_id: str,
    device_id: str,
    name: str,
    actor: str,
    now: dt.datetime,
) -> None:
    """Remove one per-device override (NotFoundError if absent)."""
    device = in_fleet(session, fleet_id, device_id)
    if repo.delete_env(session, device.id, name) == 0:
        raise NotFoundError(f"device {device_id!r} has no variable {name!r}")
    record(
        session,
        "device.env.delete",
        actor,
        {"fleet": fleet_id, "device": device.id, "name": name},
        org_id=org_id,
        at=now,
    )
    session.commit()


def crl_der(session: Session, ca: DeviceCa, now: dt.datetime) -> bytes:
    """The current CRL of the device CA (every revoked or deleted device)."""
    entries = [(int(r.serial, 16), r.revoked_at) for r in repo.revoked(session)]
    return ca.crl(entries, now=now)
