"""The app factory: ``create_app(settings)`` builds one complete fleet server.

It creates the :class:`~bastion.server.db.engine.Database` for
``settings.resolved_database_url()``, applies every migration (SQLite and PostgreSQL
from empty), builds the :class:`~bastion.server.context.AppContext` on
``app.state.ctx``, installs the body-size middleware and the one error mapper, and
installs every feature.

Features are discovered: each package ``bastion.server.<feature>`` with a module
``routes`` that defines ``install(app: FastAPI) -> None`` is installed, in name
order. ``install`` includes its routers (under ``/v1``) and may register
authenticators (:func:`bastion.server.auth.principal.auth_registry`). Adding a feature
therefore needs no edit here.

OpenAPI: ``/openapi.json``; interactive docs: ``/docs``.
"""

from __future__ import annotations

import importlib
import pkgutil
import time

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

    try:
        install_audit_key(settings, db, clock.now())
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
    for name in feature_modules():
        module = importlib.import_module(name)
        module.install(app)
    return app


def feature_modules() -> list[str]:
    """Dotted names of every ``bastion.server.<feature>.routes`` module, sorted."""
    import bastion.server as server_pkg

    names = []
    for info in sorted(pkgutil.iter_modules(server_pkg.__path__), key=lambda m: m.name):
        if not info.ispkg:
            continue
        candidate = f"bastion.server.{info.name}.routes"
        if importlib.util.find_spec(candidate) is not None:
            names.append(candidate)
    return names
