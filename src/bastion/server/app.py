"""The app factory: ``create_app(settings)`` builds one complete fleet server.

It creates the :class:`~bastion.server.db.engine.Database` for
``settings.resolved_database_url()``, applies every migration (SQLite and PostgreSQL
from empty), builds the :class:`~bastion.server.context.AppContext` (hung on the app
once, read through :func:`~bastion.server.context.app_context`), installs the
body-size middleware and the one error mapper, and installs every feature; the
device heartbeat routes' second request path (:mod:`bastion.server.hotpath`) is the
innermost middleware.

Features are listed here, explicitly and in one place: :func:`features` names the
``routes`` module of each ``bastion.server.<feature>`` package, and its
``install(app: FastAPI) -> None`` includes the routers (under ``/v1``) and may register
authenticators (:func:`bastion.server.auth.principal.auth_registry`). A new feature is
one more line there (tests/integration/server/test_app_features.py fails otherwise).
Per-app objects (the device CA, the enrolment service) are built here and kept in the
:class:`~bastion.server.context.AppContext`, never on ``app.state``.

OpenAPI: ``/openapi.json``; interactive docs: ``/docs``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import ModuleType

from fastapi import FastAPI

from bastion import __version__
from bastion.io.clock import Clock, SystemClock
from bastion.server.admission import AdmissionMiddleware, request_concurrency
from bastion.server.agent.writer import SignedWriter
from bastion.server.answers import AnswerCache, Listener
from bastion.server.auth.passwords import PasswordHasher
from bastion.server.auth.principal import AuthRegistry
from bastion.server.auth.ratelimit import (
    Limiter,
    LoginDelay,
    RateLimiter,
    SharedLoginDelay,
    SharedRateLimiter,
)
from bastion.server.bus import Bus, LocalBus
from bastion.server.context import AppContext
from bastion.server.db.engine import Database, ensure_private_dir
from bastion.server.errors import install_error_handlers
from bastion.server.hotpath import DeviceHotPath
from bastion.server.json_body import StrictJsonMiddleware
from bastion.server.limits import BodyLimitMiddleware
from bastion.server.oidc.provider import build_provider
from bastion.server.secretbox import load_secret_box
from bastion.server.settings import ServerSettings

API_PREFIX = "/v1"

log = logging.getLogger(__name__)


def create_app(
    settings: ServerSettings, *, clock: Clock | None = None, migrate: bool = True
) -> FastAPI:
    """A ready fleet server app; the database is migrated to the newest schema."""
    clock = clock or SystemClock()
    oidc = build_provider(settings)  # ConfigError before anything is opened
    if settings.database_url is None:
        ensure_private_dir(settings.data_dir)
    secret_box = load_secret_box(settings.resolved_secret_key(), create=True)
    db = Database(
        settings.resolved_database_url(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
    )
    if migrate:
        db.upgrade(secret_box=lambda: secret_box)
    from bastion.server.audit.keys import install_audit_key
    from bastion.server.devices.ca import DeviceCa
    from bastion.server.enrollment.service import EnrollmentService
    from bastion.server.provisioning.policy import RateLimiter as EnrollLimiter

    try:
        install_audit_key(settings, db, clock.now())
        device_ca = DeviceCa.load_or_create(settings.data_dir / "pki", now=clock.now())
    except BaseException:
        db.dispose()
        raise
    from bastion.server.releases.tuf_renewal import renewer_for
    from bastion.server.webhooks.worker import WebhookWorker

    try:
        tuf_renewer = renewer_for(db, clock, settings)
    except BaseException:
        db.dispose()
        raise

    limiter, login_limiter, login_delay = _limits(settings, db, clock)
    answers = _answers(settings, db)
    ctx = AppContext(
        settings=settings,
        db=db,
        clock=clock,
        passwords=PasswordHasher(
            settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
        ),
        auth=AuthRegistry(),
        limiter=limiter,
        login_limiter=login_limiter,
        secret_box=secret_box,
        login_delay=login_delay,
        oidc=oidc,
        device_ca=device_ca,
        enrollment=EnrollmentService(
            ca=device_ca, limiter=EnrollLimiter(), monotonic=clock.monotonic
        ),
        bus=_bus(settings),
        webhooks=WebhookWorker(db, secret_box, clock, settings.webhook_poll_seconds)
        if settings.webhook_worker
        else None,
        tuf_renewer=tuf_renewer,
        answers=answers,
        signed_writer=_signed_writer(db, answers) if answers is not None else None,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if ctx.webhooks is not None:
            ctx.webhooks.start()
        if ctx.tuf_renewer is not None:
            ctx.tuf_renewer.start()
        if ctx.answers is not None:
            ctx.answers.ensure()
        warmup = None
        if ctx.signed_writer is not None and settings.device_key_warmup:
            from bastion.server.agent.warmup import warm_keys

            warmup = asyncio.get_running_loop().create_task(
                warm_keys(ctx), name="bastion-device-keys"
            )
        try:
            yield
        finally:
            if warmup is not None and not warmup.done():
                warmup.cancel()
            if ctx.tuf_renewer is not None:
                ctx.tuf_renewer.stop()
            if ctx.webhooks is not None:
                ctx.webhooks.stop()
            steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                (getattr(close, "__qualname__", repr(close)), close) for close in ctx.on_close
            ]
            if ctx.signed_writer is not None:
                steps.append(("signed writer", ctx.signed_writer.close))
            if ctx.answers is not None:
                steps.append(("answer cache", ctx.answers.close))
            steps.append(("event bus", ctx.bus.close))
            for name, close in steps:
                await bounded_step(name, close(), settings.shutdown_step_seconds)

    app = FastAPI(
        title="bastion fleet API",
        version=__version__,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    if settings.device_fast_path:  # innermost: every other middleware wraps it (ADR 0043)
        app.add_middleware(DeviceHotPath)
    app.add_middleware(StrictJsonMiddleware, max_body=settings.max_body)  # inner
    from bastion.server.releases.routes import UPLOAD_PATH

    app.add_middleware(
        BodyLimitMiddleware,
        max_body=settings.max_body,
        large=[("POST", UPLOAD_PATH, settings.release_max_size)],
    )
    install_error_handlers(app)
    for module in features():
        install: Callable[[FastAPI], None] = module.install
        install(app)
    # outermost: a request waits here, holding nothing, until the pool can serve it
    app.add_middleware(
        AdmissionMiddleware,
        limit=settings.http_concurrency
        or request_concurrency(db.capacity, settings.channel_db_concurrency),
    )
    return app


async def bounded_step(name: str, step: Awaitable[None], seconds: float) -> bool:
    """Run one shutdown step for at most ``seconds``; True when it finished.

    A step that does not finish in time (a worker thread waiting on the database, a
    broker that does not answer) is cancelled and left behind with an error in the
    log, so that one stuck step cannot keep the process, or the next step, from
    shutting down. A step that raises is logged the same way; the next step runs."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()  # not awaited: a thread under it may never return
        log.error("shutdown: %s did not finish in %g s; left behind", name, seconds)
        return False
    if task.cancelled():
        log.error("shutdown: %s was cancelled", name)
        return False
    exc = task.exception()
    if exc is not None:
        log.error("shutdown: %s failed: %s", name, exc)
        return False
    return True


def worker_app() -> FastAPI:
    """The app of one ``bastion server --workers N`` worker: settings from the
    ``BASTION_SERVER_*`` environment its parent exported, database already migrated."""
    return create_app(ServerSettings(), migrate=False)


def _signed_writer(db: Database, answers: Listener) -> SignedWriter:
    """The group commit of signed requests' nonces and heartbeats (ADR 0048)."""
    from bastion.server.agent.service import NONCE_KEEP

    return SignedWriter(
        db.url, NONCE_KEEP, answers.cache.presence_seconds, changed=answers.changed_here
    )


def _answers(settings: ServerSettings, db: Database) -> Listener | None:
    """The device answer cache and its listener, where it applies (ADR 0044)."""
    if not (settings.is_postgres and settings.device_fast_path and settings.device_answer_cache):
        return None
    from bastion.server.devices.service import LAST_SEEN_RESOLUTION

    cache = AnswerCache(
        settings.device_answer_cache_entries,
        presence_seconds=LAST_SEEN_RESOLUTION.total_seconds(),
    )
    listener = Listener(cache, db.url, db)
    listener.watch_writes(db)
    return listener


def _limits(
    settings: ServerSettings, db: Database, clock: Clock
) -> tuple[Limiter, Limiter, LoginDelay]:
    """The API limiter, the login limiter and the login delay: in memory, or shared by
    every process on the database (docs/adr/0034-scale-and-webhooks.md)."""
    free, max_delay = settings.login_failures_free, settings.login_delay_max
    if settings.resolved_rate_limit_backend() == "memory":
        return (
            RateLimiter(settings.rate_per_second, settings.rate_burst, clock.monotonic),
            RateLimiter(
                settings.login_rate_per_second,
                settings.login_burst,
                clock.monotonic,
                what="login attempts",
            ),
            LoginDelay(clock.monotonic, time.sleep, free=free, max_seconds=max_delay),
        )

    def wall() -> float:
        return clock.now().timestamp()

    lease = settings.rate_lease or max(1, settings.rate_burst // 10)
    return (
        SharedRateLimiter(
            db,
            "api",
            settings.rate_per_second,
            settings.rate_burst,
            wall,
            lease=min(lease, settings.rate_burst),
        ),
        SharedRateLimiter(
            db,
            "login",
            settings.login_rate_per_second,
            settings.login_burst,
            wall,
            what="login attempts",
        ),
        SharedLoginDelay(db, wall, time.sleep, free=free, max_seconds=max_delay),
    )


def _bus(settings: ServerSettings) -> Bus:
    """The message bus the settings ask for (docs/adr/0034-scale-and-webhooks.md)."""
    backend = settings.resolved_bus_backend()
    if backend == "postgres":
        from bastion.server.bus_pg import PgBus

        return PgBus(settings.resolved_database_url())
    if backend == "nats":
        from bastion.server.bus_nats import NatsBus

        assert settings.nats_url is not None  # resolved_bus_backend checked it
        return NatsBus(settings.nats_url, settings.nats_subject_prefix)
    return LocalBus()


def features() -> tuple[ModuleType, ...]:
    """The ``routes`` module of every feature, in install order: the one router list."""
    from bastion.server.agent import routes as agent
    from bastion.server.attestation import routes as attestation
    from bastion.server.channel import routes as channel
    from bastion.server.devices import routes as devices
    from bastion.server.ektrust import routes as ektrust
    from bastion.server.enrollment import routes as enrollment
    from bastion.server.health import routes as health
    from bastion.server.metrics import routes as metrics
    from bastion.server.oidc import routes as oidc
    from bastion.server.orgs import routes as orgs
    from bastion.server.provisioning import routes as provisioning
    from bastion.server.releases import routes as releases
    from bastion.server.rollouts import routes as rollouts
    from bastion.server.ui import routes as ui
    from bastion.server.users import routes as users
    from bastion.server.webhooks import routes as webhooks

    return (
        agent,
        attestation,
        channel,
        devices,
        ektrust,
        enrollment,
        health,
        metrics,
        oidc,
        orgs,
        provisioning,
        releases,
        rollouts,
        ui,
        users,
        webhooks,
    )
