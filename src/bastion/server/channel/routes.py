"""HTTP and WebSocket edge of remote control (ADR 0033, docs/agent.md).

=========  ========================================================  ==========
method     path                                                      who
=========  ========================================================  ==========
WebSocket  /v1/device/channel                                        the device (signed)
POST       /v1/fleets/{fleet_id}/devices/{device_id}/commands        operator
GET        /v1/fleets/{fleet_id}/devices/{device_id}/commands        viewer
GET        /v1/fleets/{fleet_id}/devices/{device_id}/commands/{id}   viewer
POST       /v1/fleets/{fleet_id}/devices/{device_id}/commands/{id}/cancel  operator
=========  ========================================================  ==========

The channel accepts only an RFC 9421 signed upgrade request (ADR 0032): a bearer token
or a bad signature is refused before the upgrade (HTTP 403). Once open it registers
with the process's :class:`~bastion.server.channel.hub.ChannelHub`, which writes its
presence and checks for open commands in batches; the channel reads and sends its
commands when woken: by the hub's check, a bus notice on ``device:<id>``, a result, or
the hub's sweep every ``CHANNEL_POLL_SECONDS``. Once open it announces itself on
``device:<id>``; an older channel of the same device, in any process, then closes with
code 4001 (ADR 0034, "Presence on the bus"). After the first delivery it sends
``{"type": "synced"}`` once: every command queued before the channel opened is on the
wire. The device's ``result`` messages finish
commands. Revoking or deleting a device publishes its notice, so its channel closes at
once; deleting a fleet publishes ``fleet:<id>``, and the hub of every process closes
that fleet's channels after one batched check (the sweep would find them too). Every
database call of a channel runs through the hub's bounded thread slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any

import anyio.from_thread
from fastapi import APIRouter, FastAPI, Query, WebSocket, WebSocketDisconnect

from bastion import limits
from bastion.errors import BastionError, FormatError, RevokedError
from bastion.formats import strict_json
from bastion.server.auth.deps import (
    Ctx,
    DbSession,
    FleetOperator,
    FleetViewer,
    signed_message_of,
)
from bastion.server.auth.principal import Principal, PrincipalKind
from bastion.server.channel import service
from bastion.server.channel.hub import SUPERSEDED, ChannelHub, OpenChannel
from bastion.server.channel.schemas import CommandIn, CommandOut, wire
from bastion.server.context import AppContext, app_context

router = APIRouter(tags=["channel"])
log = logging.getLogger(__name__)
POLICY_VIOLATION = 1008
#: the close code of a channel that a newer channel of its device replaced (ADR 0034)
SUPERSEDED_CODE = 4001
#: sent once, after the first delivery: the commands queued before the channel opened
#: are all on the wire (``bastion agent run --once`` waits for it)
SYNCED = json.dumps({"type": "synced"})


class SupersededError(Exception):
    """A newer channel of the device opened (on this process or another)."""


def notify(ctx: AppContext, device_id: str, message: str) -> None:
    """Publish ``device:<id>`` from a sync route (a worker thread of the event loop).

    Best effort: the database is the source of truth, so a bus that is down (its
    connection lost, or closed while the app restarts) only delays delivery until the
    channels' next check; it never fails the request that already committed."""
    _publish(ctx, f"device:{device_id}", message)


def notify_fleet(ctx: AppContext, fleet_id: str, message: str) -> None:
    """Publish ``fleet:<id>`` (best effort, like :func:`notify`): the channel hub of every
    process re-checks its channels of that fleet at once, in one batch, and closes those
    whose device is gone (a deleted fleet)."""
    _publish(ctx, f"fleet:{fleet_id}", message)


#: notices being published (a reference keeps each task alive until it is done)
_publishing: set[asyncio.Task[None]] = set()


def _publish(ctx: AppContext, channel_name: str, message: str) -> None:
    """Hand the notice to the event loop and return at once: the route's thread (and the
    pooled connections its request holds) does not wait for the bus round trip."""
    if ctx.bus is None:
        return
    bus = ctx.bus

    async def send() -> None:
        try:
            await bus.publish(channel_name, message)
        except BastionError as exc:
            log.warning("notice %s not sent (the channel check delivers it): %s", channel_name, exc)

    def start() -> None:
        task = asyncio.ensure_future(send())
        _publishing.add(task)
        task.add_done_callback(_publishing.discard)

    try:
        anyio.from_thread.run_sync(start)
    except RuntimeError:  # not in a worker thread (a CLI calling the service directly)
        asyncio.run(send())


@router.post(
    "/fleets/{fleet_id}/devices/{device_id}/commands", response_model=CommandOut, status_code=201
)
def queue_command(
    device_id: str, body: CommandIn, access: FleetOperator, session: DbSession, ctx: Ctx
) -> CommandOut:
    """Queue a command for the device; it runs when the device's channel is (or gets) open."""
    row = service.queue(
        session,
        access,
        device_id,
        body.kind,
        body.args,
        body.ttl_seconds,
        body.confirm,
        ctx.clock.now(),
    )
    out = CommandOut.of(row)
    notify(ctx, device_id, row.id)
    return out


@router.get("/fleets/{fleet_id}/devices/{device_id}/commands", response_model=list[CommandOut])
def list_commands(
    device_id: str,
    access: FleetViewer,
    session: DbSession,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=limits.COMMANDS_LIST_MAX)] = 50,
) -> list[CommandOut]:
    """The device's commands, newest first."""
    rows = service.list_commands(session, access.fleet_id, device_id, limit, ctx.clock.now())
    return [CommandOut.of(r) for r in rows]


@router.get(
    "/fleets/{fleet_id}/devices/{device_id}/commands/{command_id}", response_model=CommandOut
)
def get_command(
    device_id: str, command_id: str, access: FleetViewer, session: DbSession, ctx: Ctx
) -> CommandOut:
    """One command and its result."""
    service.expire(session, device_id, ctx.clock.now())
    return CommandOut.of(service.get_command(session, access.fleet_id, device_id, command_id))


@router.post(
    "/fleets/{fleet_id}/devices/{device_id}/commands/{command_id}/cancel",
    response_model=CommandOut,
)
def cancel_command(
    device_id: str, command_id: str, access: FleetOperator, session: DbSession, ctx: Ctx
) -> CommandOut:
    """Cancel a command that has not finished."""
    row = service.cancel(session, access, device_id, command_id, ctx.clock.now())
    return CommandOut.of(row)


# --- the device's channel --------------------------------------------------------------------


def _authenticate(ctx: AppContext, websocket: WebSocket) -> Principal:
    signed = signed_message_of(websocket.scope)
    if signed is None:
        raise FormatError("the channel needs an RFC 9421 signed upgrade request")
    now = ctx.clock.now()
    with ctx.db.session(write=False) as session:
        principal = ctx.auth.resolve(session, None, None, now, signed)
    if principal.kind is not PrincipalKind.DEVICE:
        raise FormatError("only a device may open the command channel")
    ctx.limiter.hit(principal.rate_key)
    return principal


def _take(ctx: AppContext, principal: Principal, sent: set[str]) -> list[dict[str, Any]]:
    now = ctx.clock.now()
    with ctx.db.session(write=True) as session:
        rows = service.deliverable(session, principal, now, sent)
        messages = [wire(r) for r in rows]
        service.mark_sent(session, [r.id for r in rows], now)
    return messages


def _finish(ctx: AppContext, principal: Principal, message: dict[str, Any]) -> None:
    command_id, ok, output = service.parse_result(message)
    with ctx.db.session(write=True) as session:
        service.finish(session, principal, command_id, ok, output, ctx.clock.now())


async def channel(websocket: WebSocket, hub: ChannelHub) -> None:
    """The device's persistent command channel (module docstring)."""
    ctx = app_context(websocket.app)
    try:
        principal = await hub.run_db(_authenticate, ctx, websocket)
    except BastionError as exc:
        log.info("channel refused: %s", exc)
        await websocket.close(code=POLICY_VIOLATION, reason=str(exc)[:120])
        return
    await websocket.accept()
    # subscribe before the hub's first check, so a command queued in between is either
    # seen by that check or announced by its notice
    subscription = await ctx.bus.subscribe(f"device:{principal.id}") if ctx.bus else None
    here = OpenChannel(principal.id, principal.fleet_id or "", ctx.clock.now())
    wake = here.wake

    async def notices() -> None:
        if subscription is None:
            await asyncio.Event().wait()
            return
        async for notice in subscription:
            here.hear(notice)  # a newer channel of this device closes this one

    async def reader() -> None:
        while True:
            text = await websocket.receive_text()
            if len(text.encode()) > limits.CHANNEL_MESSAGE_MAX_SIZE:
                raise FormatError(f"channel message over {limits.CHANNEL_MESSAGE_MAX_SIZE} bytes")
            message = strict_json.loads_object(text.encode(), what="channel message")
            kind = message.get("type")
            if kind == "result":
                await hub.run_db(_finish, ctx, principal, message)
                here.due()  # the next command, if any
            elif kind == "ping":
                await websocket.send_text(json.dumps({"type": "pong"}))
            else:
                raise FormatError(f"unknown channel message type {kind!r}")

    async def sender() -> None:
        sent: set[str] = set()
        synced = False
        while True:
            await wake.wait()  # the hub's first check, a bus notice, a result, the sweep
            wake.clear()
            if here.superseded:
                raise SupersededError(here.closing)
            if here.closing is not None:
                raise RevokedError(here.closing)
            if here.must_read:
                here.must_read = False
                for message in await hub.run_db(_take, ctx, principal, sent):
                    await websocket.send_text(json.dumps(message))
                    sent.add(message["id"])
            if not synced:  # every command queued before the channel opened is sent
                await websocket.send_text(SYNCED)
                synced = True

    await hub.attach(here)
    tasks = [asyncio.ensure_future(t()) for t in (notices, reader, sender)]
    if ctx.bus is not None:  # after subscribing: an older channel of the device closes
        try:
            await ctx.bus.publish(f"device:{principal.id}", here.announcement())
        except BastionError as exc:
            log.warning("channel of device %s not announced: %s", principal.id, exc)
    code, reason = 1000, ""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if isinstance(error, SupersededError):
                log.info("channel of device %s closed: %s", principal.id, error)
                code, reason = SUPERSEDED_CODE, SUPERSEDED
            elif isinstance(error, BastionError):
                log.info("channel of device %s closed: %s", principal.id, error)
                code = POLICY_VIOLATION
            elif error is not None and not isinstance(error, WebSocketDisconnect):
                log.warning("channel of device %s failed: %r", principal.id, error)
                code = 1011
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if subscription is not None:
            await subscription.close()
        await hub.detach(here)
        with contextlib.suppress(Exception):
            await websocket.close(code=code, reason=reason)


def install(app: FastAPI) -> None:
    """Mount the routes, and the channel with this app's :class:`ChannelHub`."""
    from bastion.server.app import API_PREFIX

    ctx = app_context(app)
    hub = ChannelHub(ctx)
    ctx.on_close.append(hub.close)

    async def device_channel(websocket: WebSocket) -> None:
        await channel(websocket, hub)

    app.include_router(router, prefix=API_PREFIX)
    app.add_api_websocket_route(API_PREFIX + "/device/channel", device_channel)
