"""The app factory: ``create_app(settings)`` builds one complete fleet server.

It creates the :class:`~bastion.server.db.engine.Database` for
``settings.resolved_database_url()``, applies every migration (SQLite and PostgreSQL
from empty), builds the :class:`~bastion.server.context.AppContext` (hung on the app
once, read through :func:`~bastion.server.context.app_context`), installs the
body-size middleware and the one error mapper, and installs every feature.

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

import time
from collections.abc import Callable
from types import ModuleType

from fastapi import FastAPI

from bastion import __version__
from bastion.io.clock import Clock, SystemClock
from bastion.server.auth.passwords import PasswordHasher
from bastion.server.auth.principal import AuthRegistry
from bastion.server.auth.ratelimit import LoginDelay, RateLimiter
from bastion.server.context import AppContext
from bastion.server.db.engine import Database, ensure_private_dir
from bastion.server.errors import install_error_handlers
from bastion.server.json_body import StrictJsonMiddleware
from bastion.server.limits import BodyLimitMiddleware
from bastion.server.oidc.provider import build_provider
from bastion.server.secretbox import load_secret_box
from bastion.server.settings import ServerSettings

API_PREFIX = "/v1"


def create_app(
    settings: ServerSettings, *, clock: Clock | None = None, migrate: bool = True
) -> FastAPI:
    """A ready fleet server app; the database is migrated to the newest schema."""
    clock = clock or SystemClock()
    oidc = build_provider(settings)  # ConfigError before anything is opened
    if settings.database_url is None:
        ensure_private_dir(settings.data_dir)
    secret_box = load_secret_box(settings.resolved_secret_key(), create=True)
    db = Database(settings.resolved_database_url())
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
    ctx = AppContext(
        settings=settings,
        db=db,
        clock=clock,
        passwords=PasswordHasher(
            settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
        ),
        auth=AuthRegistry(),
        limiter=RateLimiter(settings.rate_per_second, settings.rate_burst, clock.monotonic),
        login_limiter=RateLimiter(
            settings.login_rate_per_second,
            settings.login_burst,
            clock.monotonic,
            what="login attempts",
        ),
        secret_box=secret_box,
        login_delay=LoginDelay(
            clock.monotonic,
            time.sleep,
            free=settings.login_failures_free,
            max_seconds=settings.login_delay_max,
        ),
        oidc=oidc,
        device_ca=device_ca,
        enrollment=EnrollmentService(
            ca=device_ca, limiter=EnrollLimiter(), monotonic=clock.monotonic
        ),
    )
    app = FastAPI(
        title="bastion fleet API",
        version=__version__,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_middleware(StrictJsonMiddleware, max_body=settings.max_body)  # inner
    app.add_middleware(BodyLimitMiddleware, max_body=settings.max_body)
    install_error_handlers(app)
    for module in features():
        install: Callable[[FastAPI], None] = module.install
        install(app)
    return app


def features() -> tuple[ModuleType, ...]:
    """The ``routes`` module of every feature, in install order: the one router list."""
    from bastion.server.attestation import routes as attestation
    from bastion.server.devices import routes as devices
    from bastion.server.ektrust import routes as ektrust
    from bastion.server.enrollment import routes as enrollment
    from bastion.server.health import routes as health
    from bastion.server.metrics import routes as metrics
    from bastion.server.oidc import routes as oidc
    from bastion.server.orgs import routes as orgs
    from bastion.server.provisioning import routes as provisioning
    from bastion.server.users import routes as users

    return (
        attestation,
        devices,
        ektrust,
        enrollment,
        health,
        metrics,
        oidc,
        orgs,
        provisioning,
        users,
    )
