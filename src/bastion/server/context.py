"""Everything one app instance shares, built by the app factory.

The context hangs on the app once; :func:`app_context` is the one place that reads it.
Routes and dependencies reach it through :func:`bastion.server.auth.deps.get_ctx`, a
feature's ``install`` through :func:`app_context`; no module keeps its own engine,
settings, clock, CA or service objects (nothing else goes on ``app.state``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.io.clock import Clock
from bastion.server.auth.passwords import PasswordHasher
from bastion.server.auth.principal import AuthRegistry
from bastion.server.auth.ratelimit import Limiter, LoginDelay
from bastion.server.bus import Bus, LocalBus
from bastion.server.db.engine import Database
from bastion.server.oidc.provider import OidcProvider
from bastion.server.secretbox import SecretBox
from bastion.server.settings import ServerSettings

if TYPE_CHECKING:
    from bastion.server.agent.writer import SignedWriter
    from bastion.server.answers import Listener
    from bastion.server.devices.ca import DeviceCa
    from bastion.server.enrollment.service import EnrollmentService
    from bastion.server.releases.tuf_renewal import TufRenewer
    from bastion.server.webhooks.worker import WebhookWorker


@dataclass(frozen=True, slots=True)
class AppContext:
    """Settings, database, clock, password hasher, authenticators and rate limiters."""

    settings: ServerSettings
    db: Database
    clock: Clock
    passwords: PasswordHasher
    auth: AuthRegistry
    limiter: Limiter
    login_limiter: Limiter
    #: seals stored secrets (TOTP seeds); None only in contexts that never touch them
    secret_box: SecretBox | None = None
    #: slows logins to an account under guessing (None: no delay, e.g. the CLI)
    login_delay: LoginDelay | None = None
    #: the operator's OpenID provider (None: OIDC sign-in is off)
    oidc: OidcProvider | None = None
    #: the device CA (``<data_dir>/pki``): issues device certificates, signs the CRL
    device_ca: DeviceCa | None = None
    #: the enrolment service (device CA + per-key rate limiter)
    enrollment: EnrollmentService | None = None
    #: fan-out of notices between server processes (LocalBus in one process)
    bus: Bus = field(default_factory=LocalBus)
    #: delivers webhooks from the outbox (None: this process does not deliver)
    webhooks: WebhookWorker | None = None
    #: re-signs the TUF snapshot and timestamp before they expire (None: not configured)
    tuf_renewer: TufRenewer | None = None
    #: the device answer cache and its LISTEN connection (PostgreSQL only; None: off;
    #: docs/adr/0044-device-answer-cache.md)
    answers: Listener | None = None
    #: stores the nonces and heartbeats of signed requests the hot path verified, by
    #: group commit (with the answer cache only; docs/adr/0048-signed-requests-on-the-hot-path.md)
    signed_writer: SignedWriter | None = None
    #: awaited when the app stops, before the bus closes (a feature's pending writes)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def app_context(app: Any) -> AppContext:
    """The context of an app made by :func:`bastion.server.app.create_app`."""
    ctx = app.state.ctx
    if not isinstance(ctx, AppContext):
        raise TypeError("not an app made by create_app: it has no AppContext")
    return ctx
