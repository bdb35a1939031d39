"""Everything one app instance shares, built by the app factory.

The context hangs on the app once; :func:`app_context` is the one place that reads it.
Routes and dependencies reach it through :func:`bastion.server.auth.deps.get_ctx`, a
feature's ``install`` through :func:`app_context`; no module keeps its own engine,
settings, clock, CA or service objects (nothing else goes on ``app.state``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bastion.io.clock import Clock
from bastion.server.auth.passwords import PasswordHasher
from bastion.server.auth.principal import AuthRegistry
from bastion.server.auth.ratelimit import LoginDelay, RateLimiter
from bastion.server.db.engine import Database
from bastion.server.oidc.provider import OidcProvider
from bastion.server.secretbox import SecretBox
from bastion.server.settings import ServerSettings

if TYPE_CHECKING:
    from bastion.server.devices.ca import DeviceCa
    from bastion.server.enrollment.service import EnrollmentService


@dataclass(frozen=True, slots=True)
class AppContext:
    """Settings, database, clock, password hasher, authenticators and rate limiters."""

    settings: ServerSettings
    db: Database
    clock: Clock
    passwords: PasswordHasher
    auth: AuthRegistry
    limiter: RateLimiter
    login_limiter: RateLimiter
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


def app_context(app: Any) -> AppContext:
    """The context of an app made by :func:`bastion.server.app.create_app`."""
    ctx = app.state.ctx
    if not isinstance(ctx, AppContext):
        raise TypeError("not an app made by create_app: it has no AppContext")
    return ctx
