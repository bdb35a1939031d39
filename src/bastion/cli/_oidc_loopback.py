"""``bastion login --oidc``: the loopback listener that receives the provider's redirect.

The CLI asks the server for ``GET /v1/auth/oidc/login?cli_port=PORT`` (without following
the redirect: the answer's ``Location`` is the provider URL, its cookie binds the
sign-in to this client), prints the URL for the operator to open in a browser, and
waits on ``http://127.0.0.1:PORT/callback`` for the browser to arrive with ``code`` and
``state``. It then calls the server's callback itself, with the cookie, and gets the
session (or, for accounts with TOTP, a ticket it exchanges with a code). Only the first
request to ``/callback`` is taken; the listener binds 127.0.0.1 only and stops after it.
"""

from __future__ import annotations

import http.server
import threading
from urllib.parse import parse_qs, urlsplit

from bastion import limits
from bastion.errors import AuthError, FormatError

PAGE = (
    b"<!doctype html><title>bastion</title><p>Sign-in received: you can close this "
    b"window and return to the terminal.</p>"
)


class LoopbackReceiver:
    """A one-shot HTTP listener on 127.0.0.1 for the OIDC redirect."""

    def __init__(self, port: int = 0) -> None:
        self._params: dict[str, str] | None = None
        self._arrived = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/callback" or receiver._arrived.is_set():
                    self.send_error(404)
                    return
                if len(parts.query) > 4 * limits.OIDC_PARAM_MAX_LENGTH:
                    self.send_error(414)
                    return
                query = parse_qs(parts.query)
                receiver._params = {k: v[0] for k, v in query.items() if v}
                receiver._arrived.set()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = http.server.HTTPServer(("127.0.0.1", port), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> dict[str, str]:
        """The redirect's query parameters; AuthError when none came in time."""
        if not self._arrived.wait(timeout):
            raise AuthError(f"no sign-in arrived on 127.0.0.1:{self.port} in {timeout:.0f} s")
        assert self._params is not None
        if "error" in self._params:
            raise AuthError(f"the OIDC provider refused the sign-in: {self._params['error'][:64]}")
        if "state" not in self._params or "code" not in self._params:
            raise FormatError("the redirect has no code or state")
        return self._params

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
