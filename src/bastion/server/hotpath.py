"""The heartbeat routes' second request path: an ASGI layer beside FastAPI's router (ADR 0043).

Devices call ``GET /v1/device``, ``/v1/device/config`` and ``/v1/device/target-release``
all the time. :class:`DeviceHotPath` answers exactly those, for a request carrying a
device API key, without FastAPI's router, dependency solver and response validation;
everything else, and every request it is not sure about (:func:`hot_route`), goes to
the FastAPI app untouched.

It is the innermost middleware of the app (``create_app`` adds it first), so every
other middleware (admission, request metrics, Content-Digest, body limits, Starlette's
500 handler) wraps a fast request as it wraps any other. The work is the FastAPI
endpoints' own: :func:`bastion.server.attestation.gate.device_work` with the route's
:class:`~bastion.server.attestation.gate.DeviceRoute`, in one worker-thread call. A
success is serialized as FastAPI serializes the route's ``response_model``; a domain
error goes to the handler the app registered for it (``app.exception_handlers``, along
the exception's MRO, as Starlette's exception middleware looks it up); anything with
no handler but ``Exception``'s is re-raised into ``ServerErrorMiddleware`` (a 500, as
on the FastAPI path). tests/integration/server/test_device_fast_path.py sends every
case through both paths and compares status, headers and body.

On PostgreSQL the layer first looks in the device answer cache
(:mod:`bastion.server.answers`, ADR 0044): a kept answer that is still within its
deadline, for a caller the rate limiter lets through without I/O, is sent as it was
stored (``GET /v1/device``: with the device's newest ``last_seen_at``,
:func:`presence_renderer`), with no session and no worker thread. A miss does the work as
above and keeps a successful answer.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from pydantic import BaseModel, TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bastion.server.agent.schemas import HeartbeatIn, HeartbeatOut
from bastion.server.agent.service import KnownDevice
from bastion.server.answers import (
    PRESENCE_COLUMN,
    Answer,
    Listener,
    credential_key,
    deadline,
    posix,
)
from bastion.server.attestation.gate import DeviceRoute, device_answer
from bastion.server.auth.principal import Principal
from bastion.server.context import AppContext, app_context
from bastion.server.json_body import replay

#: the one credential the fast path takes; anything else falls through
_DEVICE_BEARER = b"Bearer bst_dev_"
#: headers that send a request to the FastAPI path: a signed request (its own
#: authenticator writes a nonce), a body digest, a body
_FALL_THROUGH_HEADERS = frozenset({b"signature-input", b"content-digest", b"transfer-encoding"})
#: what a signed request the fast path takes carries, once each (ADR 0048)
_SIGNED_HEADERS = (b"signature-input", b"signature", b"content-digest")
#: prefix of a signed device's answer cache key (no Authorization header hashes to it:
#: the fast path takes only ``Bearer bst_dev_`` ones)
_SIGNED_KEY = b"signature "


def hot_routes() -> dict[str, DeviceRoute[Any]]:
    """Path -> route of the heartbeat routes the fast path answers."""
    from bastion.server.app import API_PREFIX
    from bastion.server.devices.routes import CONFIG, OWN
    from bastion.server.rollouts.routes import TARGET

    return {
        f"{API_PREFIX}/device": OWN,
        f"{API_PREFIX}/device/config": CONFIG,
        f"{API_PREFIX}/device/target-release": TARGET,
    }


def _plain_get(scope: Scope, routes: Mapping[str, DeviceRoute[Any]]) -> DeviceRoute[Any] | None:
    """The route of an HTTP ``GET`` of one of ``routes`` exactly (raw path the same bytes,
    no root path, no query string) over no TLS detail we would have to judge; else None."""
    if scope["type"] != "http" or scope.get("method") != "GET":
        return None
    path = scope.get("path")
    route = routes.get(path) if isinstance(path, str) else None
    if route is None or scope.get("root_path", "") != "" or scope.get("query_string", b""):
        return None
    assert isinstance(path, str)
    if scope.get("raw_path") != path.encode("ascii"):
        return None
    tls = (scope.get("extensions") or {}).get("tls")
    if tls:
        return None  # mTLS devices (and any TLS detail we would have to judge) fall through
    return route


def hot_route(scope: Scope, routes: Mapping[str, DeviceRoute[Any]]) -> DeviceRoute[Any] | None:
    """The route this request is, if the fast path may answer it for certain; else None.

    Only an HTTP ``GET`` of one of ``routes`` exactly (raw path the same bytes, no root
    path, no query string), with exactly one ``Authorization: Bearer bst_dev_...``
    header, no body, no signature, no body digest and no TLS client certificate."""
    route = _plain_get(scope, routes)
    if route is None:
        return None
    bearer = 0
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            if not bytes(value).startswith(_DEVICE_BEARER):
                return None
            bearer += 1
        elif name in _FALL_THROUGH_HEADERS or (name == b"content-length" and value != b"0"):
            return None
    return route if bearer == 1 else None


def signed_hot_route(
    scope: Scope, routes: Mapping[str, DeviceRoute[Any]], heartbeat: str | None = None
) -> DeviceRoute[Any] | str | None:
    """What signed agent request this is, if the fast path may take it (ADR 0048): its
    route for a ``GET`` of ``routes``, the ``heartbeat`` path for a ``POST`` of it; else
    None.

    A ``GET`` as :func:`hot_route` takes, with no body; or a ``POST`` of ``heartbeat``
    exactly (raw path the same bytes, no root path, no query, no TLS detail) with one
    ``Content-Type: application/json`` and one ``Content-Length``. Either with no
    ``Authorization``, no ``Transfer-Encoding`` and exactly one ``Signature-Input``,
    ``Signature`` and ``Content-Digest`` (the digest middleware, outside this layer,
    checked it against the body)."""
    target: DeviceRoute[Any] | str | None = _plain_get(scope, routes)
    post = False
    if target is None:
        path = scope.get("path")
        if not (
            heartbeat is not None
            and scope["type"] == "http"
            and scope.get("method") == "POST"
            and path == heartbeat
            and scope.get("raw_path") == heartbeat.encode("ascii")
            and scope.get("root_path", "") == ""
            and not scope.get("query_string", b"")
            and not (scope.get("extensions") or {}).get("tls")
        ):
            return None
        target, post = heartbeat, True
    seen: dict[bytes, int] = dict.fromkeys(_SIGNED_HEADERS, 0)
    json_type = length = 0
    for name, value in scope.get("headers", ()):
        if name in seen:
            seen[name] += 1
        elif name in (b"authorization", b"transfer-encoding"):
            return None
        elif name == b"content-length":
            if not post and value != b"0":
                return None
            length += 1
        elif name == b"content-type" and post:
            if bytes(value).lower() != b"application/json":
                return None
            json_type += 1
    if post and (json_type != 1 or length != 1):
        return None
    return target if all(count == 1 for count in seen.values()) else None


#: a time no device is seen at, dumped in place of ``last_seen_at`` to find where the
#: body shows it
_MARK = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
_TIME = TypeAdapter(dt.datetime)
_MARK_JSON = _TIME.dump_json(_MARK)


def presence_renderer(
    adapter: TypeAdapter[Any], result: BaseModel
) -> Callable[[dt.datetime], bytes] | None:
    """How to show ``result``'s body with another ``last_seen_at`` (the answer cache calls
    it when the device's presence moved): the body around that one value, kept as two
    byte strings (not the model), and the time dumped as the model dumps it. None when
    the value cannot be found exactly once (the answer is then not kept)."""
    marked = adapter.dump_json(result.model_copy(update={PRESENCE_COLUMN: _MARK}), by_alias=True)
    if marked.count(_MARK_JSON) != 1:
        return None
    before, _, after = marked.partition(_MARK_JSON)
    return partial(_shown_at, before, after)


def _shown_at(before: bytes, after: bytes, at: dt.datetime) -> bytes:
    return before + _TIME.dump_json(at) + after


def _known_device(ctx: AppContext, device_id: str) -> KnownDevice:
    """The device's :class:`~bastion.server.agent.service.KnownDevice` (blocking)."""
    from bastion.server.agent import service as agent

    with ctx.db.session(write=False, autocommit=True) as session:
        return agent.known_device(session, device_id)


def _authorization(scope: Scope) -> bytes:
    """The request's ``Authorization`` value (:func:`hot_route` made sure there is one)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    raise AssertionError("hot_route admitted a request without Authorization")


class DeviceHotPath:
    """Answer the heartbeat routes of device API keys directly; pass the rest to ``app``.

    ``answered`` counts the requests this layer answered itself, ``cached`` those of
    them it answered from the device answer cache (tests read both)."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, DeviceRoute[Any]] | None = None) -> None:
        self.app = app
        self.routes = dict(routes if routes is not None else hot_routes())
        from bastion.server.app import API_PREFIX

        #: the heartbeat's path: signed heartbeats are written here (ADR 0048)
        self.heartbeat = f"{API_PREFIX}/device/heartbeat"
        self._heartbeat_out = TypeAdapter(HeartbeatOut)
        self.answered = 0
        self.cached = 0
        #: of ``answered``, the signed requests (ADR 0048)
        self.signed = 0
        self._adapters: dict[type[BaseModel], TypeAdapter[Any]] = {
            r.model: TypeAdapter(r.model) for r in self.routes.values()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = hot_route(scope, self.routes)
        if route is None:
            signed = signed_hot_route(scope, self.routes, self.heartbeat)
            if signed is not None:
                passed = await self._signed(scope, receive, send, signed)
                if passed is not None:
                    await self.app(scope, passed, send)
                return
            await self.app(scope, receive, send)
            return
        self.answered += 1
        request = Request(scope, receive)
        ctx = app_context(request.app)
        listener, key, ticket = ctx.answers, b"", None
        if listener is not None:
            listener.ensure()
            listener.drain()
            key = credential_key(_authorization(scope))
            now = ctx.clock.now()
            kept = listener.cache.get(key, scope["path"], now.timestamp(), now)
            if kept is not None and ctx.limiter.try_hit(kept.rate_key):
                self.cached += 1
                response = Response(content=kept.body, media_type="application/json")
                await response(scope, receive, send)
                return
            ticket = listener.cache.ticket()
        await self._work(request, send, route, listener, key, ticket)

    async def _work(  # noqa: PLR0917 - the request, where to keep its answer, who
        self,
        request: Request,
        send: Send,
        route: DeviceRoute[Any],
        listener: Listener | None,
        key: bytes,
        ticket: int | None,
        signed: Principal | None = None,
    ) -> None:
        """The route's work in one worker-thread call, answered; a success kept in the
        answer cache under ``key`` if the cache did not change since ``ticket``."""
        ctx = app_context(request.app)
        try:
            result, answered = await run_in_threadpool(device_answer, request, route, signed)
        except Exception as exc:
            response = await self._handled(request, exc)
        else:
            adapter = self._adapters[route.model]
            body = adapter.dump_json(result, by_alias=True)
            response = Response(content=body, media_type="application/json")
            render = None
            if listener is not None and route.shows_last_seen:
                render = presence_renderer(adapter, result)
            if (
                listener is not None
                and answered.seen_at is not None
                and (render is not None or not route.shows_last_seen)
            ):
                keep = Answer(
                    body,
                    answered.device_id,
                    answered.rate_key,
                    until=deadline(ctx.clock.now(), answered.until),
                    seen_at=posix(answered.seen_at),
                    render=render,
                )
                listener.cache.put(ticket, key, request.scope["path"], keep)
        await response(request.scope, request.receive, send)

    async def _signed(
        self, scope: Scope, receive: Receive, send: Send, target: DeviceRoute[Any] | str
    ) -> Receive | None:
        """Answer a signed request (ADR 0048) and return None; or, having sent nothing
        and stored no nonce, the ``receive`` the full path must read the request from:
        no answer cache or it is off, a device this process does not know as active, a
        signature that does not verify, a heartbeat body the model refuses (the full
        path refuses each with its own message)."""
        from bastion.errors import BastionError
        from bastion.server.agent import service as agent
        from bastion.server.auth.deps import client_address, signed_message_of

        request = Request(scope, receive)
        ctx = app_context(request.app)
        listener, writer = ctx.answers, ctx.signed_writer
        if listener is None or writer is None:
            return receive
        listener.ensure()
        listener.drain()
        cache = listener.cache
        signed = signed_message_of(scope)
        if not cache.online or signed is None:
            return receive
        report: dict[str, Any] | None = None
        if isinstance(target, str):
            body = await request.body()
            receive = replay(body, receive)
            try:
                report = HeartbeatIn.model_validate_json(body).model_dump(exclude_unset=True)
            except ValueError:
                return receive
        try:
            device_id = agent.signer_id(signed)
        except BastionError:
            return receive
        kept = cache.known(device_id)
        if isinstance(kept, KnownDevice):
            known = kept
        else:
            ticket = cache.ticket()
            try:
                known = await run_in_threadpool(_known_device, ctx, device_id)
            except BastionError:
                return receive
            cache.keep_known(ticket, device_id, known)
        now = ctx.clock.now()
        try:
            principal, nonce = agent.verify_known(known, signed, now)
        except BastionError:
            return receive
        self.answered += 1
        self.signed += 1
        principal = replace(principal, client=client_address(request))
        try:
            # a heartbeat: the rate limit before anything is written
            if report is not None and not ctx.limiter.try_hit(principal.rate_key):
                await run_in_threadpool(ctx.limiter.hit, principal.rate_key)
            pending = await writer.remember(
                principal.id,
                nonce,
                now,
                report,
                versions=report is not None and known.changes_versions(report),
                presence=cache.presence_due(principal.id, now.timestamp()),
            )
        except Exception as exc:
            await (await self._handled(request, exc))(scope, receive, send)
            return None
        request.state.principal = principal
        if isinstance(target, str):
            out = HeartbeatOut(server_time=now, pending_commands=pending or 0)
            body = self._heartbeat_out.dump_json(out, by_alias=True)
            await Response(content=body, media_type="application/json")(scope, receive, send)
            return None
        key = credential_key(_SIGNED_KEY + device_id.encode())
        answer = cache.get(key, scope["path"], now.timestamp(), now)
        if answer is not None and ctx.limiter.try_hit(answer.rate_key):
            self.cached += 1
            await Response(content=answer.body, media_type="application/json")(scope, receive, send)
            return None
        await self._work(request, send, target, listener, key, cache.ticket(), principal)
        return None

    async def _handled(self, request: Request, exc: Exception) -> Response:
        """The app's own handler's answer to ``exc``; re-raises what only ``Exception``'s
        handler would take (``ServerErrorMiddleware`` answers it, as for any route)."""
        handlers: Mapping[Any, Any] = getattr(request.app, "exception_handlers", {})
        for cls in type(exc).__mro__:
            if cls is Exception:
                break
            handler = handlers.get(cls)
            if handler is not None:
                answer = handler(request, exc)
                if inspect.isawaitable(answer):
                    answer = await answer
                if not isinstance(answer, Response):  # pragma: no cover - ours all answer
                    raise exc
                return answer
        raise exc
