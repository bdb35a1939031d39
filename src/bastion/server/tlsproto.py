"""Serving the app with uvicorn: HTTPS, optional client certificates (mTLS), and the
ASGI TLS extension that carries the verified client certificate to the app.

uvicorn verifies a client certificate against ``--client-ca`` (``ssl.CERT_OPTIONAL``:
devices present one, operators and browsers need not) but does not tell the app which
certificate was presented. :class:`TlsHttpToolsProtocol` (what :func:`http_protocol`
gives) and :class:`TlsH11Protocol` fill the ASGI TLS extension
(``scope["extensions"]["tls"]``, keys as in the ASGI spec: ``client_cert_chain`` is a
list of PEM strings, ``tls_version``, ``cipher_suite``) from the connection's SSL object;
:func:`bastion.server.auth.deps.peer_certificate` reads it. Only a certificate the TLS
layer has verified ever reaches the extension (``getpeercert`` returns nothing
otherwise), so the app never trusts an unverified chain.

:func:`serve` is what ``bastion server`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bastion.errors import ConfigError
from bastion.server.settings import ServerSettings

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, Any] | None:
    """The ASGI ``tls`` extension for one connection (None on plain HTTP)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
        "cipher_name": cipher[0] if cipher else None,
    }


def _wrap_with_tls(inner: Any, transport: asyncio.Transport) -> Any:
    """``inner`` with this connection's TLS extension in every HTTP scope (``inner``
    itself on plain HTTP)."""
    extension = tls_extension(transport.get_extra_info("ssl_object"))
    if extension is None:
        return inner

    async def app_with_tls(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "extensions": {**scope.get("extensions", {}), "tls": extension}}
        await inner(scope, receive, send)

    return app_with_tls


class TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the TLS extension to every HTTP scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _wrap_with_tls(self.app, transport)


class TlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, adding the TLS extension to every HTTP scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _wrap_with_tls(self.app, transport)


def http_protocol() -> type[asyncio.Protocol]:
    """The HTTP/1.1 protocol ``bastion server`` runs: httptools' C parser (several times
    cheaper per request than h11's pure-Python one: docs/server.md "Device API speed");
    both protocol classes add the TLS extension. Module-level classes: ``--workers``
    pickles the configuration for its worker processes."""
    return TlsHttpToolsProtocol


def event_loop() -> str:
    """The event loop ``bastion server`` runs: uvloop (libuv) where it is installed, a
    base dependency on every platform but Windows; asyncio's own loop otherwise. uvloop
    costs less per request and per connection (ADR 0043, "Third round")."""
    try:
        import uvloop  # noqa: F401
    except ImportError:  # not installed (Windows)
        return "asyncio"
    return "uvloop"


def uvicorn_config_kwargs(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: address, protocol, TLS and mTLS."""
    settings.check_listen()
    kwargs: dict[str, Any] = {
        "host": settings.listen_host,
        "port": settings.listen_port,
        "http": http_protocol(),
        "loop": event_loop(),
        "proxy_headers": False,
        "server_header": False,
        "log_level": "info",
        "access_log": settings.access_log,
    }
    if settings.tls_cert is not None:
        for what, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
            if path is None or not path.is_file():
                raise ConfigError(f"{what} {path} is not a readable file")
        kwargs["ssl_certfile"] = str(settings.tls_cert)
        kwargs["ssl_keyfile"] = str(settings.tls_key)
        if settings.client_ca is not None:
            if not settings.client_ca.is_file():
                raise ConfigError(f"--client-ca {settings.client_ca} is not a readable file")
            kwargs["ssl_ca_certs"] = str(settings.client_ca)
            kwargs["ssl_cert_reqs"] = ssl.CERT_OPTIONAL
    return kwargs


def serve(settings: ServerSettings, *, workers: int = 1) -> None:
    """Build the app and run it until interrupted (blocks).

    With ``workers > 1`` (PostgreSQL only: docs/server.md "Running several processes")
    this process builds the app once (migrations, device CA, audit and secret keys), then
    exports the settings as ``BASTION_SERVER_*`` variables and lets uvicorn spawn the
    workers, each building its app with :func:`bastion.server.app.worker_app`."""
    import uvicorn

    from bastion.server.app import create_app

    kwargs = uvicorn_config_kwargs(settings)
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give 1 or more")
    if workers == 1:
        app = create_app(settings)
        uvicorn.Server(uvicorn.Config(app, **kwargs)).run()
        return
    if not settings.is_postgres:
        raise ConfigError(
            f"--workers {workers} needs PostgreSQL (--database-url): SQLite and the "
            "in-memory rate limits are for one process"
        )
    holder = reserve_port(settings.listen_host, settings.listen_port) if REUSE_PORT else None
    with holder if holder is not None else contextlib.nullcontext():
        _serve_workers(settings, workers, kwargs, holder)


def _serve_workers(
    settings: ServerSettings, workers: int, kwargs: dict[str, Any], holder: socket.socket | None
) -> None:
    """Build the app once, then run ``workers`` worker processes on ``holder``'s port
    (each its own socket, ADR 0046), or on uvicorn's one socket without ``holder``."""
    import uvicorn

    from bastion.server.app import create_app

    create_app(settings, migrate=True).state.ctx.db.dispose()
    export_settings(settings)
    worker_kwargs = dict(
        factory=True,
        workers=workers,
        # a worker busy with a connect storm on a loaded host answers the parent's health
        # ping late; killing it would drop every channel it holds (bench/agents.py saw it)
        timeout_worker_healthcheck=settings.worker_healthcheck_seconds,
        **kwargs,
    )
    if holder is None:  # no SO_REUSEPORT here: uvicorn's one shared socket
        uvicorn.run("bastion.server.app:worker_app", **worker_kwargs)
        return
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("bastion.server.app:worker_app", **worker_kwargs)
    listener = ReusePortListener(holder.family, holder.getsockname(), config.backlog)
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[listener]).run()  # type: ignore[list-item]


#: this system lets several sockets listen on one port (Linux, the BSDs)
REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


def _reuse_port_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` that does not listen: it
    keeps the port for this server's workers (ADR 0046) and gets no connection. Port 0
    picks a free one (read it from the socket). ConfigError when the address is taken,
    also by another server of the same user (whose sockets would accept this one's), or
    cannot be bound."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--listen {host}:{port}: {exc.strerror}") from exc
    if port:
        # SO_REUSEPORT alone would let this server join another one of the same user
        # listening there, and take half its connections: first bind without it, which
        # fails if anything listens on the address
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise ConfigError(f"--listen {host}:{port}: cannot bind: {exc.strerror}") from exc
    sock = _reuse_port_socket(family)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--listen {host}:{port}: cannot bind: {exc.strerror}") from exc
    return sock


def listen_reuse_port(family: int, address: tuple[Any, ...], backlog: int) -> socket.socket:
    """A new socket listening on ``address`` with ``SO_REUSEPORT``: one worker's own
    (ADR 0046). ConfigError naming the address when it cannot listen there (the worker
    ends with it; the supervisor logs it and starts another)."""
    sock = _reuse_port_socket(family)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"worker cannot listen on {address}: {exc.strerror}") from exc
    return sock


@dataclass(frozen=True)
class ReusePortListener:
    """What the supervisor hands each worker instead of its own socket: pickled to the
    worker, it becomes a new socket of that worker's (:func:`listen_reuse_port`)."""

    family: int
    address: tuple[Any, ...]
    backlog: int

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return listen_reuse_port, (self.family, self.address, self.backlog)


def export_settings(settings: ServerSettings) -> None:
    """Put every set value of ``settings`` into this process's environment (for workers)."""
    import os

    for name, value in settings.model_dump(mode="json").items():
        variable = f"BASTION_SERVER_{name.upper()}"
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = str(value).lower() if isinstance(value, bool) else str(value)
