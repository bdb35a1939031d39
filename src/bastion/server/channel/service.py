"""Commands for devices: queue, deliver, report, expire, cancel (ADR 0033).

Operators queue a command with :func:`queue` (fleet RBAC is the route's: operator and
above); the row is the truth, the bus notice (``device:<id>``) only wakes the server
process that holds the device's channel. The channel calls :func:`deliverable` (which
first marks every open command past its ``expires_at`` as ``expired``) and
:func:`mark_sent`; the device's result goes through :func:`finish`. Every queue,
result, expiry and cancel writes an audit entry; ``wipe`` is refused unless the
request repeats the device id in ``confirm``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError, ConflictError, FormatError, NotFoundError
from bastion.server.agent.models import DevicePresence
from bastion.server.audit.service import record
from bastion.server.auth.principal import Principal
from bastion.server.auth.rbac import FleetAccess
from bastion.server.channel.models import CommandStatus, DeviceCommand
from bastion.server.devices import repository as devices_repo
from bastion.server.devices import service as devices

#: command kinds and the argument names each accepts
KINDS: Mapping[str, frozenset[str]] = {
    "reboot": frozenset(),
    "restart-service": frozenset({"unit"}),
    "attest": frozenset(),
    "check-update": frozenset(),
    "collect-logs": frozenset(),
    "rotate-key": frozenset(),
    "wipe": frozenset(),
}
UNIT_PATTERN = re.compile(r"^[A-Za-z0-9:_.@-]{1,128}\.(service|target|socket|timer)$")


def check_command(kind: str, args: Mapping[str, Any], confirm: str | None, device_id: str) -> None:
    """Refuse an unknown kind, unknown or bad arguments, and an unconfirmed wipe."""
    if kind not in KINDS:
        raise FormatError(f"unknown command {kind!r}; known: {', '.join(sorted(KINDS))}")
    extra = set(args) - KINDS[kind]
    if extra:
        raise FormatError(f"command {kind} takes no argument {sorted(extra)[0]!r}")
    if kind == "restart-service":
        unit = args.get("unit")
        if not isinstance(unit, str) or not UNIT_PATTERN.match(unit):
            raise FormatError(
                f"restart-service needs a systemd unit name like 'app.service', got {unit!r}"
            )
    if kind == "wipe" and confirm != device_id:
        raise FormatError(
            f"wipe erases device {device_id} and makes it reprovision: repeat its id in "
            f"'confirm' (got {confirm!r})"
        )
    if len(json.dumps(dict(args))) > limits.COMMAND_ARGS_MAX_SIZE:
        raise FormatError(f"command arguments are over {limits.COMMAND_ARGS_MAX_SIZE} bytes")


def queue(  # noqa: PLR0917 - the request's parts
    session: Session,
    access: FleetAccess,
    device_id: str,
    kind: str,
    args: Mapping[str, Any],
    ttl_seconds: int,
    confirm: str | None,
    now: dt.datetime,
) -> DeviceCommand:
    """Store a command for a device of the caller's fleet (committed, audited)."""
    device = devices_repo.get(session, device_id)
    if device is None or device.fleet_id != access.fleet_id:
        raise NotFoundError(f"device {device_id} not found in this fleet")
    if device.status != "active":
        raise ConflictError(f"device {device_id} is revoked: it cannot run commands")
    check_command(kind, args, confirm, device_id)
    if not 0 < ttl_seconds <= limits.COMMAND_TTL_MAX_SECONDS:
        raise FormatError(f"ttl must be 1..{limits.COMMAND_TTL_MAX_SECONDS} s, got {ttl_seconds}")
    command = DeviceCommand(
        device_id=device_id,
        fleet_id=access.fleet_id,
        kind=kind,
        args=json.dumps(dict(args), sort_keys=True),
        status=CommandStatus.QUEUED,
        created_by=access.principal.actor,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=ttl_seconds),
    )
    session.add(command)
    session.flush()
    details = {"device_id": device_id, "command_id": command.id, "kind": kind, "args": dict(args)}
    event = "device.command.wipe" if kind == "wipe" else "device.command.queue"
    record(session, event, access.principal.actor, details, org_id=access.org_id, at=now)
    session.commit()
    return command


def expire(session: Session, device_id: str | None, now: dt.datetime) -> int:
    """Mark open commands past their expiry ``expired`` (one device, or all); committed."""
    query = update(DeviceCommand).where(
        DeviceCommand.status.in_(CommandStatus.OPEN), DeviceCommand.expires_at <= now
    )
    if device_id is not None:
        query = query.where(DeviceCommand.device_id == device_id)
    result = session.execute(
        query.values(status=CommandStatus.EXPIRED, finished_at=now).execution_options(
            synchronize_session=False
        )
    )
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


def deliverable(
    session: Session, principal: Principal, now: dt.datetime, skip: set[str]
) -> list[DeviceCommand]:
    """Open, unexpired commands of the calling device not in ``skip``, oldest first.

    Raises (AuthError/RevokedError) when the device was deleted or revoked meanwhile."""
    devices.own(session, principal)
    expire(session, principal.id, now)
    rows = session.execute(
        select(DeviceCommand)
        .where(
            DeviceCommand.device_id == principal.id,
            DeviceCommand.status.in_(CommandStatus.OPEN),
        )
        .order_by(DeviceCommand.created_at, DeviceCommand.id)
        .limit(limits.CHANNEL_SEND_MAX + len(skip))
    ).scalars()
    return [row for row in rows if row.id not in skip][: limits.CHANNEL_SEND_MAX]


def needing_attention(session: Session, device_ids: list[str]) -> set[str]:
    """Of ``device_ids``, those with a queued command, or no longer active (revoked or
    deleted): the channels the sweep must wake. Read-only; a few queries for any count."""
    with_commands, gone = attention(session, device_ids, (CommandStatus.QUEUED,))
    return with_commands | gone


def attention(
    session: Session, device_ids: list[str], statuses: tuple[str, ...]
) -> tuple[set[str], set[str]]:
    """Of ``device_ids``: (those with a command in one of ``statuses``, those no longer
    active: revoked or deleted). Read-only; two queries per ``CHANNEL_SWEEP_BATCH`` ids.

    The channel hub asks it with ``QUEUED`` on its periodic sweep (sent commands went out
    on this very channel) and with both open statuses for channels that just connected (a
    command sent on an earlier connection but never answered is delivered again)."""
    with_commands: set[str] = set()
    gone: set[str] = set()
    for start in range(0, len(device_ids), limits.CHANNEL_SWEEP_BATCH):
        batch = device_ids[start : start + limits.CHANNEL_SWEEP_BATCH]
        with_commands.update(
            session.execute(
                select(DeviceCommand.device_id)
                .where(DeviceCommand.device_id.in_(batch), DeviceCommand.status.in_(statuses))
                .distinct()
            ).scalars()
        )
        active = set(devices_repo.active_among(session, batch))
        gone.update(d for d in batch if d not in active)
    return with_commands - gone, gone


def write_presence(
    session: Session,
    connects: Mapping[str, dt.datetime],
    disconnects: Mapping[str, dt.datetime],
) -> None:
    """Record channels opened (device id -> connection time) and closed (device id -> the
    closing connection's time) in one transaction; committed.

    Opening upserts the presence row (``connected``, ``connected_at``); closing clears
    ``connected`` only where ``connected_at`` is still that connection's, so a channel
    closed here never hides a newer one the device opened meanwhile (on this process or
    another). Devices deleted meanwhile are skipped."""
    if connects:
        existing = set(devices_repo.existing_among(session, list(connects)))
        rows = [
            {"device_id": d, "connected": True, "connected_at": at}
            for d, at in connects.items()
            if d in existing
        ]
        if rows:
            insert = _dialect_insert(session)
            statement = insert(DevicePresence).values(rows)
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[DevicePresence.device_id],
                    set_={
                        "connected": statement.excluded.connected,
                        "connected_at": statement.excluded.connected_at,
                    },
                )
            )
    if disconnects:
        table = cast(Table, DevicePresence.__table__)
        session.execute(  # Core executemany: one statement, a parameter set per channel
            update(table)
            .where(
                table.c.device_id == bindparam("b_device"),
                table.c.connected_at == bindparam("b_at"),
            )
            .values(connected=False),
            [{"b_device": d, "b_at": at} for d, at in disconnects.items()],
        )
    session.commit()


def _dialect_insert(session: Session) -> Any:
    """``INSERT`` with ``ON CONFLICT`` for this session's database (SQLite or PostgreSQL)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def mark_sent(session: Session, ids: list[str], now: dt.datetime) -> None:
    """Mark commands sent (those still queued); committed."""
    if ids:
        session.execute(
            update(DeviceCommand)
            .where(DeviceCommand.id.in_(ids), DeviceCommand.status == CommandStatus.QUEUED)
            .values(status=CommandStatus.SENT, sent_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()


def finish(  # noqa: PLR0917 - the result's parts
    session: Session,
    principal: Principal,
    command_id: str,
    ok: bool,
    output: str,
    now: dt.datetime,
) -> DeviceCommand:
    """Store the device's result for one of its commands (committed, audited).

    A result for an expired or cancelled command is kept as the output but does not
    change the status; a second result for a finished command is ignored."""
    command = session.get(DeviceCommand, command_id)
    if command is None or command.device_id != principal.id:
        raise NotFoundError(f"command {command_id} is not one of this device's")
    if command.status not in CommandStatus.OPEN:
        return command
    if len(output.encode()) > limits.COMMAND_OUTPUT_MAX_SIZE:
        output = output.encode()[: limits.COMMAND_OUTPUT_MAX_SIZE].decode(errors="ignore")
    command.status = CommandStatus.SUCCEEDED if ok else CommandStatus.FAILED
    command.finished_at = now
    command.output = output
    details = {"device_id": principal.id, "command_id": command.id, "kind": command.kind, "ok": ok}
    record(
        session, "device.command.result", principal.actor, details, org_id=principal.org_id, at=now
    )
    session.commit()
    return command


def list_commands(
    session: Session, fleet_id: str, device_id: str, limit: int, now: dt.datetime
) -> list[DeviceCommand]:
    """A device's commands, newest first (expiry applied first)."""
    device = devices_repo.get(session, device_id)
    if device is None or device.fleet_id != fleet_id:
        raise NotFoundError(f"device {device_id} not found in this fleet")
    expire(session, device_id, now)
    return list(
        session.execute(
            select(DeviceCommand)
            .where(DeviceCommand.device_id == device_id)
            .order_by(DeviceCommand.created_at.desc(), DeviceCommand.id)
            .limit(limit)
        ).scalars()
    )


def get_command(session: Session, fleet_id: str, device_id: str, command_id: str) -> DeviceCommand:
    """One command of a device of this fleet."""
    command = session.get(DeviceCommand, command_id)
    if command is None or command.device_id != device_id or command.fleet_id != fleet_id:
        raise NotFoundError(f"command {command_id} not found for device {device_id}")
    return command


def cancel(
    session: Session, access: FleetAccess, device_id: str, command_id: str, now: dt.datetime
) -> DeviceCommand:
    """Cancel a command that has not finished (committed, audited)."""
    command = get_command(session, access.fleet_id, device_id, command_id)
    if command.status not in CommandStatus.OPEN:
        raise ConflictError(f"command {command_id} is already {command.status}")
    command.status = CommandStatus.CANCELLED
    command.finished_at = now
    details = {"device_id": device_id, "command_id": command_id, "kind": command.kind}
    record(
        session,
        "device.command.cancel",
        access.principal.actor,
        details,
        org_id=access.org_id,
        at=now,
    )
    session.commit()
    return command


def parse_result(message: Mapping[str, Any]) -> tuple[str, bool, str]:
    """(command id, ok, output) of a device's ``result`` message; FormatError if malformed."""
    command_id = message.get("id")
    ok = message.get("ok")
    output = message.get("output", "")
    if not isinstance(command_id, str) or not 0 < len(command_id) <= 64:
        raise FormatError("result message: 'id' must be a command id")
    if not isinstance(ok, bool):
        raise FormatError("result message: 'ok' must be true or false")
    if not isinstance(output, str):
        raise FormatError("result message: 'output' must be a string")
    return command_id, ok, output


def require_device(principal: Principal) -> None:
    """AuthError unless ``principal`` is a device."""
    if principal.kind.value != "device":
        raise AuthError("only a device may open the command channel")
