"""The operator side of the fleet API for the ``device`` and ``provisioning-key`` commands.

Where the server is and who is calling: ``--server URL`` (else ``$BASTION_SERVER``) and a
bearer token from ``$BASTION_TOKEN`` (a session or a ``bst_pat_`` personal API token,
e.g. made by ``bastion login``). ``--ca-file PEM`` verifies an HTTPS server against the
fleet PKI. Errors come back as the server's one-line ``detail`` mapped onto bastion's
error tree (401/403 AuthError, 404 NotFoundError, ...), so the CLI prints one line.
"""

from __future__ import annotations

import argparse
import os
import ssl
from typing import Any

import httpx

from bastion import limits
from bastion.errors import (
    AuthError,
    BastionError,
    ConfigError,
    ConflictError,
    FormatError,
    NotFoundError,
    RateLimitError,
    TransportError,
    VerificationError,
)

_CODES: dict[str, type[BastionError]] = {
    "unauthenticated": AuthError,
    "forbidden": AuthError,
    "rate_limited": RateLimitError,
    "verification_failed": VerificationError,
    "bad_request": FormatError,
    "invalid": FormatError,
    "too_large": FormatError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
}


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--ca-file``."""
    parser.add_argument("--server", metavar="URL", help="fleet server (default: $BASTION_SERVER)")
    parser.add_argument(
        "--ca-file", metavar="PEM", help="CA certificate to verify an HTTPS server with"
    )


def server_url(args: argparse.Namespace) -> str:
    """The server URL from ``--server`` or ``$BASTION_SERVER``; ConfigError if neither."""
    url = getattr(args, "server", None) or os.environ.get("BASTION_SERVER")
    if not url:
        raise ConfigError("no fleet server: give --server URL or set BASTION_SERVER")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"server URL {url!r} must start with http:// or https://")
    return url.rstrip("/")


def verify_setting(args: argparse.Namespace) -> bool | ssl.SSLContext:
    """TLS verification: the system store, or ``--ca-file``."""
    ca = getattr(args, "ca_file", None)
    return ssl.create_default_context(cafile=ca) if ca else True


def client(args: argparse.Namespace, *, token: bool = True) -> httpx.Client:
    """An HTTP client for the server, with the operator's token when ``token``."""
    headers = {}
    if token:
        secret = os.environ.get("BASTION_TOKEN")
        if not secret:
            raise AuthError("no operator token: log in (bastion login) or set BASTION_TOKEN")
        headers["Authorization"] = f"Bearer {secret.strip()}"
    return httpx.Client(
        base_url=server_url(args), headers=headers, timeout=30.0, verify=verify_setting(args)
    )


def call(http: httpx.Client, method: str, path: str, json: Any = None) -> Any:
    """One request; the JSON answer, or the server's error as a bastion error."""
    try:
        response = http.request(method, path, json=json)
    except httpx.HTTPError as exc:
        raise TransportError(f"{method} {path}: {exc}") from exc
    if len(response.content) > limits.HTTP_MAX_BODY * 16:
        raise FormatError(f"{method} {path}: answer of {len(response.content)} bytes is too large")
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = body.get("detail") if isinstance(body, dict) else None
        code = body.get("error") if isinstance(body, dict) else None
        error = _CODES.get(str(code), TransportError)
        raise error(
            f"{method} {path}: HTTP {response.status_code}: {detail or response.text[:200]}"
        )
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise FormatError(f"{method} {path}: answer is not JSON") from exc
