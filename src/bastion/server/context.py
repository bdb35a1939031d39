"""Everything one app instance shares, built by the app factory: ``app.state.ctx``.

Routes and dependencies reach it through :func:`bastion.server.auth.deps.get_ctx`; no
module keeps its own engine, settings or clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.io.clock import Clock
from bastion.server.auth.passwords import PasswordHasher
from bastion.server.auth.principal import AuthRegistry
from bastion.server.auth.ratelimit import LoginDelay, RateLimiter
from bastion.server.db.engine import Database
from bastion.server.oidc.provider import OidcProvider
from bastion.server.secretbox import SecretBox
from bastion.server.settings import ServerSettings


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
