"""The one WebSocket client: the device agent's outbound command channel.

:func:`connect` opens ``wss://`` (or ``ws://`` to a loopback host only, as
:func:`bastion.io.http.check_server_url` allows plain HTTP) with extra headers (the
RFC 9421 signature of the upgrade request), a bounded message size and the same TLS
verification as :class:`~bastion.io.http.HttpClient`. A refused upgrade (401/403) is an
:class:`~bastion.errors.AuthError`; any other failure a
:class:`~bastion.errors.TransportError`. Messages are JSON objects read with the strict
loader.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any, Self

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from bastion import limits
from bastion.errors import AuthError, FormatError, TransportError
from bastion.formats import strict_json
from bastion.io.http import check_server_url


class Channel:
    """An open WebSocket carrying JSON objects."""

    def __init__(self, conn: ClientConnection, what: str) -> None:
        self._conn = conn
        self.what = what

    def send(self, message: Mapping[str, Any]) -> None:
        """Send one JSON object."""
        try:
            self._conn.send(json.dumps(dict(message)))
        except (WebSocketException, OSError) as exc:
            raise TransportError(f"{self.what}: send failed: {exc}") from exc

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON object, or None when nothing came within ``timeout`` seconds."""
        try:
            raw = self._conn.recv(timeout=timeout)
        except TimeoutError:
            return None
        except ConnectionClosed as exc:
            raise TransportError(f"{self.what}: closed by the server: {exc}") from exc
        except (WebSocketException, OSError) as exc:
            raise TransportError(f"{self.what}: receive failed: {exc}") from exc
        data = raw.encode() if isinstance(raw, str) else raw
        if len(data) > limits.CHANNEL_MESSAGE_MAX_SIZE:
            raise FormatError(f"{self.what}: message over {limits.CHANNEL_MESSAGE_MAX_SIZE} bytes")
        return strict_json.loads_object(data, what=f"{self.what} message")

    def close(self) -> None:
        self._conn.__exit__(None, None, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def connect(
    server: str,
    path: str,
    headers: Mapping[str, str],
    *,
    ca_file: str | None = None,
    timeout: float = limits.HTTP_CLIENT_TIMEOUT_SECONDS,
) -> Channel:
    """Open ``path`` on ``server`` (an http(s) URL) as a WebSocket with ``headers``."""
    base = check_server_url(server)
    url = "ws" + base[len("http") :] + path
    what = f"WebSocket {path} at {base}"
    context = None
    if base.startswith("https://"):
        context = (
            ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        )
    try:
        conn = ws_connect(
            url,
            additional_headers=dict(headers),
            ssl=context,
            max_size=limits.CHANNEL_MESSAGE_MAX_SIZE,
            open_timeout=timeout,
            close_timeout=5,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body.decode(errors="replace")[:200] if exc.response.body else ""
        if status in (401, 403):
            raise AuthError(
                f"{what}: the server refused the upgrade (HTTP {status}) {body}"
            ) from exc
        raise TransportError(f"{what}: HTTP {status} {body}") from exc
    except (WebSocketException, OSError, TimeoutError) as exc:
        raise TransportError(f"{what}: {exc}") from exc
    conn.__enter__()  # websockets wants the connection used as a context manager
    return Channel(conn, what)
