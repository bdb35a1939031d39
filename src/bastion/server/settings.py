"""Server settings: one pydantic-settings object handed to :func:`create_app`.

Values come from keyword arguments (the CLI), then ``BASTION_SERVER_*`` environment
variables, then the defaults below. Nothing reads settings at import time; the app
factory receives a :class:`ServerSettings` and wires everything from it.

The embedded default is zero set-up: a SQLite file ``bastion.db`` inside ``data_dir``.
Give ``database_url`` (``postgresql+psycopg://...``) for PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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

    # several processes on one database (docs/server.md "Running several processes"):
    # where notices fan out (auto: NATS when nats_url is set, else PostgreSQL LISTEN/NOTIFY
    # on PostgreSQL, else in-process)
    bus_backend: Literal["auto", "local", "postgres", "nats"] = "auto"
    # the NATS server of the "nats" bus: nats://HOST:PORT on loopback, else tls://HOST:PORT
    nats_url: str | None = Field(default=None, repr=False)  # may carry credentials
    # first tokens of every bus subject (several deployments on one NATS server)
    nats_subject_prefix: str = "bastion"
    # where rate limits and login delays live (auto: the database on PostgreSQL, else memory)
    rate_limit_backend: Literal["auto", "memory", "database"] = "auto"
    # tokens one process takes at once from a shared per-principal bucket (0: burst // 10)
    rate_lease: int = Field(default=0, ge=0)
    # PostgreSQL connections per process (SQLite ignores these): the pool, its overflow, and
    # how long a request waits for a connection before it fails (docs/server.md). All 30
    # stay open once made: an overflow connection is closed when it comes back, and under
    # load PostgreSQL forked a backend for each (ADR 0047)
    db_pool_size: int = Field(default=30, ge=1, le=1000)
    db_max_overflow: int = Field(default=0, ge=0, le=1000)
    db_pool_timeout: float = Field(default=30.0, gt=0, le=600)
    # worker threads (and so pooled connections) the device channels of one process may use
    # at once, whatever their number: the rest of the pool stays free for HTTP requests
    channel_db_concurrency: int = Field(default=4, ge=1, le=1000)
    # HTTP requests one process runs at once (0: as many as the pool serves in full, i.e.
    # (db_pool_size + db_max_overflow - channel_db_concurrency - 2) // 3); the rest wait
    http_concurrency: int = Field(default=0, ge=0, le=10000)
    # seconds a --workers N worker may leave the parent's health ping unanswered before
    # it is killed and restarted (uvicorn's default, 5 s, is too short under load)
    worker_healthcheck_seconds: int = Field(default=60, ge=1, le=3600)
    # one log line per HTTP request and WebSocket (uvicorn's access log)
    access_log: bool = True
    # deliver webhooks from this process (a background thread; off in one-shot tools)
    webhook_worker: bool = True
    # seconds between scans of the webhook outbox for due deliveries
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # seconds each shutdown step (channels, signed writer, answer cache, bus) may take;
    # one that takes longer is logged and left behind so the process still stops
    shutdown_step_seconds: float = Field(default=10.0, gt=0, le=600)
    # devices must sign every request in their TPM (RFC 9421, ADR 0032): their bearer API
    # keys and mTLS client certificates are refused (docs/agent.md "Signed requests only")
    require_signed_device_requests: bool = False
    # answer the device heartbeat routes (GET /v1/device, /config, /target-release) of
    # device API keys in an ASGI layer beside FastAPI's router (ADR 0043); off: FastAPI only
    device_fast_path: bool = True
    # keep the heartbeat answers per process, dropped when the database notifies a change
    # (ADR 0044); PostgreSQL with the fast path only, ignored on SQLite
    device_answer_cache: bool = True
    # answers each process keeps at most (three per device; about 500 bytes each with a
    # 300-byte body); when full the oldest stored is evicted (ADR 0045)
    device_answer_cache_entries: int = Field(default=131_072, ge=1, le=16_777_216)
    # on PostgreSQL with the answer cache: each process reads every active device's
    # signing key when it starts (pages of 2,000, a worker thread) instead of one per
    # device on its first signed request (ADR 0048 amendment)
    device_key_warmup: bool = True

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

    # releases (docs/updates.md "Rollouts and device reports"): uploaded bundles are kept
    # in release_store (default DATA_DIR/releases); the TUF repository folder served
    # read-only at /tuf/ (unset: /tuf/ answers 404)
    release_store: Path | None = None
    release_max_size: int = Field(
        default=limits.RELEASE_BUNDLE_MAX_SIZE, ge=1, le=limits.RELEASE_BUNDLE_MAX_SIZE
    )
    tuf_dir: Path | None = None
    # the online TUF keys (key URIs, file: or tpm:; never key bytes): with both and
    # tuf_dir set, the server re-signs snapshot and timestamp before they expire,
    # checking every tuf_renew_seconds (0: never; `bastion tuf renew` by hand)
    tuf_snapshot_key: str | None = None
    tuf_timestamp_key: str | None = None
    tuf_renew_seconds: float = Field(default=3600.0, ge=0, le=86400)

    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL: ``database_url`` or the SQLite file in ``data_dir``."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return url
        return f"sqlite:///{(self.data_dir / 'bastion.db').resolve()}"

    @property
    def is_postgres(self) -> bool:
        """True when the database is PostgreSQL (several processes may share it)."""
        return self.resolved_database_url().startswith("postgresql")

    def resolved_bus_backend(self) -> str:
        """``local``, ``postgres`` or ``nats`` (``auto``: NATS when ``nats_url`` is set,
        else it follows the database)."""
        if self.bus_backend == "auto":
            if self.nats_url:
                return "nats"
            return "postgres" if self.is_postgres else "local"
        if self.bus_backend == "postgres" and not self.is_postgres:
            raise ConfigError("bus_backend 'postgres' needs a PostgreSQL database_url")
        if self.bus_backend == "nats" and not self.nats_url:
            raise ConfigError("bus_backend 'nats' needs nats_url (e.g. nats://127.0.0.1:4222)")
        return self.bus_backend

    def resolved_rate_limit_backend(self) -> str:
        """``memory`` or ``database`` (``auto`` follows the database)."""
        if self.rate_limit_backend == "auto":
            return "database" if self.is_postgres else "memory"
        return self.rate_limit_backend

    def resolved_release_store(self) -> Path:
        """The folder uploaded bundles are kept in."""
        return self.release_store or self.data_dir / "releases"

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
