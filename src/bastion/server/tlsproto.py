"""Serving the app with uvicorn: HTTPS, optional client certificates (mTLS), and the
ASGI TLS extension that carries the verified client certificate to the app.

uvicorn verifies a client certificate against ``--client-ca`` (``ssl.CERT_OPTIONAL``:
devices present one, operators and browsers need not) but does not tell the app which
certificate was presented. :class:`TlsH11Protocol` fills the ASGI TLS extension
(``scope["extensions"]["tls"]``, keys as in the ASGI spec: ``client_cert_chain`` is a
list of PEM strings, ``tls_version``, ``cipher_suite``) from the connection's SSL
object; :func:`bastion.server.auth.deps.peer_certificate` reads it. Only a certificate
the TLS layer has verified ever reaches the extension (``getpeercert`` returns nothing
otherwise), so the app never trusts an unverified chain.

:func:`serve` is what ``bastion server`` runs.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

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


class TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the TLS extension to every HTTP scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        extension = tls_extension(transport.get_extra_info("ssl_object"))
        if extension is None:
            return
        inner = self.app

        async def app_with_tls(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope = {**scope, "extensions": {**scope.get("extensions", {}), "tls": extension}}
            await inner(scope, receive, send)

        self.app = app_with_tls


def uvicorn_config_kwargs(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: address, protocol, TLS and mTLS."""
    settings.check_listen()
    kwargs: dict[str, Any] = {
        "host": settings.listen_host,
        "port": settings.listen_port,
        "http": TlsH11Protocol,
        "proxy_headers": False,
        "server_header": False,
        "log_level": "info",
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


def serve(settings: ServerSettings) -> None:
    """Build the app and run it until interrupted (blocks)."""
    import uvicorn

    from bastion.server.app import create_app

    kwargs = uvicorn_config_kwargs(settings)
    app = create_app(settings)
    uvicorn.Server(uvicorn.Config(app, **kwargs)).run()
