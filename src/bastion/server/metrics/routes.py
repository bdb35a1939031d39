"""``GET /metrics``: Prometheus text format, for loopback clients or a bearer token.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (never the
process-wide default one), so two apps in one process share no metric. It holds

* :class:`~bastion.server.metrics.collector.FleetCollector` (devices by state,
  enrolments, logins, audit entries: read from the database at scrape time), and
* ``bastion_http_request_duration_seconds`` (histogram) and
  ``bastion_http_requests_total`` (counter), labelled by method and *route template*
  (``/v1/fleets/{fleet_id}``, never the raw path: :class:`RouteTemplates` maps each
  path to one of the app's own templates, so label values are bounded by the routes
  the app has; unmatched paths share ``<unmatched>``) and, for the counter, status code.

Who may scrape: a client on a loopback address, or anyone sending
``Authorization: Bearer <settings.metrics_token>`` (compared in constant time). Anyone
else gets 401. The route is not under ``/v1`` and takes no API credentials.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
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
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RouteTemplates:
    """Maps a request path to the app's path template, e.g. ``/v1/fleets/{fleet_id}``.

    The templates are the app's own (its OpenAPI paths and top-level routes), read once
    at the first request, when every feature is installed; a path matching none is
    ``<unmatched>``. Templates with fewer parameters are tried first, so a literal
    path wins over a parameter in the same place.
    """

    def __init__(self, app: FastAPI, extra: tuple[str, ...] = ()) -> None:
        self._app = app
        self._extra = extra
        self._compiled: list[tuple[str, re.Pattern[str]]] | None = None

    def _table(self) -> list[tuple[str, re.Pattern[str]]]:
        if self._compiled is None:
            templates = set(self._app.openapi().get("paths", {}))
            templates |= {r.path for r in self._app.routes if isinstance(r, Route)}
            templates |= set(self._extra)
            ordered = sorted(templates, key=lambda t: (t.count("{"), -len(t), t))
            self._compiled = [(t, compile_path(t)[0]) for t in ordered]
        return self._compiled

    def __call__(self, path: str) -> str:
        for template, regex in self._table():
            if regex.match(path):
                return template
        return UNMATCHED


class RequestMetricsMiddleware:
    """Times every HTTP request and counts it by method, route template and status."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        latency: Histogram,
        requests: Counter,
        clock: Clock,
        templates: Callable[[str], str],
    ) -> None:
        self.app = app
        self.latency = latency
        self.requests = requests
        self.clock = clock
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock.monotonic()
        status = 500
        path = str(scope["path"])
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        method = str(scope.get("method", "GET"))

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = self.templates(path)
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
    registry.register(FleetCollector(ctx.db))
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
    app.add_middleware(
        RequestMetricsMiddleware,
        latency=latency,
        requests=requests,
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
