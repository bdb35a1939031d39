"""Server settings: one pydantic-settings object handed to :func:`create_app`.

Values come from keyword arguments (the CLI), then ``BASTION_SERVER_*`` environment
variables, then the defaults below. Nothing reads settings at import time; the app
factory receives a :class:`ServerSettings` and wires everything from it.

The embedded default is zero set-up: a SQLite file ``bastion.db`` inside ``data_dir``.
Give ``database_url`` (``postgresql+psycopg://...``) for PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bastion import limits
from bastion.errors import ConfigError
from bastion.io.http import is_loopback

DEFAULT_DATA_DIR = Path("/var/lib/bastion/server")


class ServerSettings(BaseSettings):
    """Everything the fleet server needs to start; immutable once built."""

    model_config = SettingsConfigDict(env_prefix="BASTION_SERVER_", frozen=True, extra="forbid")

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8443, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None

    # password hashing (argon2id). Defaults: RFC 9106 "second recommended" profile.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=64 * 1024, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    # lifetimes, seconds
    session_ttl: int = Field(default=12 * 3600, ge=1)
    token_max_ttl: int = Field(default=365 * 86400, ge=1)

    # rate limits: token bucket per principal (requests/second and burst)
    rate_per_second: float = Field(default=20.0, gt=0)
    rate_burst: int = Field(default=60, ge=1)
    # login attempts per email address / per client address
    login_rate_per_second: float = Field(default=0.2, gt=0)
    login_burst: int = Field(default=10, ge=1)
    # failed logins an account absorbs before every attempt on it is delayed (not locked)
    login_failures_free: int = Field(default=5, ge=0)
    login_delay_max: float = Field(default=2.0, ge=0, le=limits.LOGIN_DELAY_MAX_SECONDS)

    max_body: int = Field(default=limits.HTTP_MAX_BODY, ge=1)
    allow_signup: bool = False
    totp_issuer: str = "bastion"
    # key URI sealing stored secrets (TOTP seeds); default file:<data_dir>/secret.key
    secret_key: str | None = None

    # audit key URI (file:PATH, PATH, tpm:BACKEND#KEYFILE); unset: DATA_DIR/audit.key (HMAC)
    audit_key: str | None = None
    # per-device quota and retention of device logs and events (each kind separately)
    device_records_max_count: int = Field(default=limits.DEVICE_RECORDS_MAX_COUNT, ge=2)
    device_records_max_bytes: int = Field(
        default=limits.DEVICE_RECORDS_MAX_BYTES, ge=2 * limits.DEVICE_RECORD_MAX_SIZE
    )
    device_records_max_age: int = Field(default=limits.DEVICE_RECORDS_MAX_AGE_SECONDS, ge=1)
    # bearer token that lets a non-loopback Prometheus scrape /metrics (unset: loopback only)
    metrics_token: str | None = Field(default=None, min_length=limits.METRICS_TOKEN_MIN_LENGTH)

    # OpenID Connect sign-in (docs/server.md "OpenID Connect"); off while oidc_issuer is unset
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    # the client secret: BASTION_SERVER_OIDC_CLIENT_SECRET, or a file holding it
    oidc_client_secret: str | None = Field(default=None, repr=False)
    oidc_client_secret_file: Path | None = None
    # this server's public callback URL, registered at the provider
    oidc_redirect_uri: str | None = None
    # let `bastion login --oidc` use http://127.0.0.1:PORT/callback as its redirect URI
    oidc_allow_loopback_redirect: bool = True
    oidc_scopes: str = "openid email"

    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL: ``database_url`` or the SQLite file in ``data_dir``."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return url
        return f"sqlite:///{(self.data_dir / 'bastion.db').resolve()}"

    def resolved_secret_key(self) -> str:
        """The URI of the key sealing stored secrets (``secret_key`` or the data folder's)."""
        if self.secret_key:
            return self.secret_key
        from bastion.server.secretbox import default_key_uri

        return default_key_uri(self.data_dir)

    def check_listen(self) -> None:
        """Refuse plain HTTP on a non-loopback address (ConfigError), and half TLS config."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        if self.client_ca is not None and self.tls_cert is None:
            raise ConfigError("--client-ca (mTLS) needs --tls-cert and --tls-key")
        if self.tls_cert is None and not is_loopback(self.listen_host):
            raise ConfigError(
                f"refusing plain HTTP on non-loopback address {self.listen_host!r}: "
                "give --tls-cert and --tls-key, or listen on 127.0.0.1/::1/localhost"
            )
