"""ASGI middleware running every JSON request body through the strict loader first.

FastAPI parses JSON bodies with the stdlib ``json`` module, which accepts duplicate keys,
``NaN``/``Infinity``, lone surrogates and nesting deep enough to exhaust the stack. This
middleware buffers a request body that FastAPI would parse as JSON (``Content-Type``
``application/json`` or ``*/*+json``, or no ``Content-Type`` with a non-empty body) and
runs :func:`bastion.formats.strict_json.loads` on it before any route or dependency runs.
A body the loader refuses is answered 422 ``invalid``, as FastAPI answers malformed JSON
(413 ``too_large`` for a bound of :mod:`bastion.limits`: size or depth); otherwise the
same bytes are replayed to the app.
The body size is bounded by ``max_body`` here as well as by
:class:`bastion.server.limits.BodyLimitMiddleware`, which sits outside this one.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.errors import FormatError, LimitError
from bastion.formats import strict_json
from bastion.server.errors import error_body
from bastion.server.limits import _respond


async def read_body(receive: Receive, send: Send, max_body: int) -> bytes | None:
    """The whole request body from ``receive``, or None when it was answered already
    (413 sent for a body over ``max_body``) or the client went away before sending it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # the client went away before sending its body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            detail = f"request body is more than {max_body} bytes"
            await _respond(send, 413, error_body("too_large", detail))
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) as the whole request, then hands
    on to ``receive`` (a disconnect): for a layer that read the body and passes the
    request on."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _is_json(scope: Scope) -> bool | None:
    """True for a JSON content type, False for another, None when absent."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            mime = bytes(value).split(b";", 1)[0].strip().lower()
            subtype: bytes = mime.partition(b"/")[2]
            return subtype == b"json" or subtype.endswith(b"+json")
    return None


class StrictJsonMiddleware:
    """Refuse JSON request bodies that :func:`strict_json.loads` refuses, before the app."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = _is_json(scope) if scope["type"] == "http" else False
        if kind is False:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, send, self.max_body)
        if body is None:
            return
        if body:
            try:
                strict_json.loads(body, what="request body", max_size=self.max_body)
            except LimitError as exc:
                await _respond(send, 413, error_body("too_large", str(exc)))
                return
            except FormatError as exc:
                detail = f"invalid request body: {exc}"
                await _respond(send, 422, error_body("invalid", detail))
                return
        await self.app(scope, replay(body, receive), send)
