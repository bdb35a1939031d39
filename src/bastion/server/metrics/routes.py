"""``GET /metrics``: Prometheus text format, for loopback clients or a bearer token.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (never the
process-wide default one), so two apps in one process share no metric. It holds

* :class:`~bastion.server.metrics.collector.FleetCollector` (devices by state,
  enrolments, logins, audit entries: read from the database at scrape time),
* :class:`~bastion.server.rollouts.metrics.RolloutCollector` (active rollouts' devices
  by wave and result, and their progress), and
* ``bastion_http_request_duration_seconds`` (histogram) and
  ``bastion_http_requests_total`` (counter), labelled by method and *route template*
  (``/v1/fleets/{fleet_id}``, never the raw path: :class:`RouteTemplates` maps each
  request to one of the app's own templates, those of nested routers and of the
  dashboard included, so label values are bounded by the routes the app has;
  unmatched paths share ``<unmatched>``) and, for the counter, status code, and
* ``bastion_channel_connections`` (gauge): the device command channels (WebSockets on
  ``/v1/device/channel``) this process holds open now. The middleware counts them
  itself, without the channel's code: up when the app accepts the WebSocket, down when
  the connection's handler returns, so refused upgrades are never counted.
* ``bastion_device_answers_total`` (counter, ``outcome``: hit, miss, stored, refused),
  ``bastion_device_answers_kept`` and ``bastion_device_answer_cache_online`` (gauges):
  this process's device answer cache (PostgreSQL only; ADR 0044), read at scrape time.

Several processes: each process has its own registry, so the per-process series
(request latency and counts, ``bastion_channel_connections``) describe the process
that answered the scrape. Behind ``bastion server --workers N`` one port serves all
workers and a scrape reaches one of them; for exact per-process series run one process
per port (``--workers 1`` each, one scrape target each) and add them up in PromQL,
e.g. ``sum(bastion_channel_connections{job="bastion"})``. The fleet-wide count of open
channels, whatever the process, is ``bastion_devices_connected`` (read from the
database by the collector).

Who may scrape: a client on a loopback address, or anyone sending
``Authorization: Bearer <settings.metrics_token>`` (compared in constant time). Anyone
else gets 401. The route is not under ``/v1`` and takes no API credentials.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from functools import lru_cache

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute, iter_route_contexts
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest
from starlette.routing import Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.errors import AuthError
from bastion.io.clock import Clock
from bastion.io.http import is_loopback
from bastion.server.auth.deps import get_ctx
from bastion.server.context import app_context
from bastion.server.metrics.collector import FleetCollector
from bastion.server.settings import ServerSettings

UNMATCHED = "<unmatched>"
METRICS_PATH = "/metrics"
#: the device command channel's WebSocket (server/channel/routes.py)
CHANNEL_PATH = "/v1/device/channel"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RouteTemplates:
    """Maps a request to the app's path template, e.g. ``/v1/fleets/{fleet_id}``.

    The templates are every route the app routes to, however deeply its routers are
    included (:func:`fastapi.routing.iter_route_contexts` gives each with its full,
    prefixed ``path_format``; ``app.routes`` alone holds only the included routers),
    API, dashboard and hidden routes alike, read once at the first request, when every
    feature is installed. They are tried in the router's own order: the first whose
    path and method match wins, else the first whose path matches (the router's 405);
    a request matching none is ``<unmatched>``.

    The answer for a (path, method) never changes once the table is read, so the last
    :data:`MEMO_SIZE` answers are kept (least recently used dropped): a heartbeat's path
    costs one dictionary lookup instead of a scan of every template's regex.
    """

    #: (path, method) answers kept; bounded, since paths carry ids
    MEMO_SIZE = 4096

    def __init__(self, app: FastAPI, extra: tuple[str, ...] = ()) -> None:
        self._app = app
        self._extra = extra
        self._compiled: list[tuple[str, re.Pattern[str], frozenset[str] | None]] | None = None
        self._memo: Callable[[str, str], str] = lru_cache(maxsize=self.MEMO_SIZE)(self._scan)

    def _table(self) -> list[tuple[str, re.Pattern[str], frozenset[str] | None]]:
        if self._compiled is None:
            table: list[tuple[str, re.Pattern[str], frozenset[str] | None]] = []
            for context in iter_route_contexts(self._app.routes):
                template = context.path_format
                if not template or not isinstance(context.original_route, Route | APIRoute):
                    continue
                methods = getattr(context.original_route, "methods", None)
                allowed = frozenset(methods) if methods else None
                table.append((template, compile_path(template)[0], allowed))
            table += [(t, compile_path(t)[0], None) for t in self._extra]
            self._compiled = table
        return self._compiled

    def templates(self) -> set[str]:
        """Every label value this app can produce."""
        return {t for t, _, _ in self._table()} | {UNMATCHED}

    def __call__(self, path: str, method: str = "GET") -> str:
        return self._memo(path, method)

    def _scan(self, path: str, method: str) -> str:
        partial: str | None = None
        for template, regex, allowed in self._table():
            if regex.match(path):
                if allowed is None or method in allowed:
                    return template
                partial = partial or template
        return partial or UNMATCHED


def _app_path(scope: Scope) -> str:
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class RequestMetricsMiddleware:
    """Times every HTTP request and counts it by method, route template and status;
    counts the open device channels (WebSockets on :data:`CHANNEL_PATH`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        latency: Histogram,
        requests: Counter,
        channels: Gauge,
        clock: Clock,
        templates: Callable[[str, str], str],
    ) -> None:
        self.app = app
        self.latency = latency
        self.requests = requests
        self.channels = channels
        self.clock = clock
        self.templates = templates

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _app_path(scope) != CHANNEL_PATH:
            await self.app(scope, receive, send)
            return
        accepted = False

        async def send_accept(message: Message) -> None:
            nonlocal accepted
            await send(message)
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                self.channels.inc()

        try:
            await self.app(scope, receive, send_accept)
        finally:
            if accepted:
                self.channels.dec()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock.monotonic()
        status = 500
        path = _app_path(scope)
        method = str(scope.get("method", "GET"))

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = self.templates(path, method)
            self.latency.labels(method, template).observe(
                max(0.0, self.clock.monotonic() - started)
            )
            self.requests.labels(method, template, str(status)).inc()


def check_scraper(request: Request, settings: ServerSettings) -> None:
    """AuthError (401) unless the client is on loopback or shows the metrics token."""
    if request.client is not None and is_loopback(request.client.host):
        return
    expected = settings.metrics_token
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    if (
        expected
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), expected.encode())
    ):
        return
    raise AuthError("metrics are served to loopback clients or with the metrics bearer token")


def install(app: FastAPI) -> None:
    """A registry for this app, the request middleware, and the ``/metrics`` route."""
    ctx = app_context(app)
    registry = CollectorRegistry()
    # process_*: this process's CPU, memory and start time (with --workers N, a scrape
    # reaches one worker; its start time tells which)
    ProcessCollector(registry=registry)
    registry.register(FleetCollector(ctx.db))
    from bastion.server.rollouts.metrics import RolloutCollector

    registry.register(RolloutCollector(ctx.db))
    if ctx.answers is not None:
        from bastion.server.answers import AnswerCacheCollector

        registry.register(AnswerCacheCollector(ctx.answers.cache))
    if ctx.signed_writer is not None:
        from bastion.server.agent.writer import SignedWriterCollector

        registry.register(SignedWriterCollector(ctx.signed_writer))
    latency = Histogram(
        "bastion_http_request_duration_seconds",
        "HTTP request latency by route template",
        ["method", "route"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )
    requests = Counter(
        "bastion_http_requests",
        "HTTP requests by route template and status",
        ["method", "route", "status"],
        registry=registry,
    )
    channels = Gauge(
        "bastion_channel_connections",
        "Device command channels (WebSockets) this server process holds open",
        registry=registry,
    )
    app.add_middleware(
        RequestMetricsMiddleware,
        latency=latency,
        requests=requests,
        channels=channels,
        clock=ctx.clock,
        templates=RouteTemplates(app, extra=(METRICS_PATH,)),
    )
    router = APIRouter(tags=["metrics"])

    @router.get(METRICS_PATH, include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Every metric of this app in the Prometheus text format."""
        check_scraper(request, get_ctx(request).settings)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
