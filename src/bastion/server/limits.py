"""ASGI middleware bounding request bodies (``settings.max_body``, default HTTP_MAX_BODY).

A request whose ``Content-Length`` exceeds the bound is answered 413 before the app
sees it; a chunked body is counted as it streams and cut off with 413 at the bound.
Past the bound the app sees a client disconnect and its answer is dropped.
A request declaring a body that is not JSON on a JSON route is left to FastAPI's
validation (422). ``large`` names the few routes that take a bigger body (a release
bundle upload): ``(method, path pattern, bound)``; every other route keeps ``max_body``.
Responses use the error body of :mod:`bastion.server.errors`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.server.errors import error_body


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``max_body`` bytes with 413."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        large: Sequence[tuple[str, re.Pattern[str], int]] = (),
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.large = tuple(large)

    def bound(self, scope: Scope) -> int:
        """The body bound of this request's route."""
        method, path = scope.get("method", ""), scope.get("path", "")
        for want, pattern, bound in self.large:
            if method == want and pattern.fullmatch(path):
                return bound
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_body = self.bound(scope)
        declared = _content_length(scope)
        if declared is not None and declared > max_body:
            await _too_large(send, max_body, declared)
            return
        if declared is not None and declared < 0:
            await _respond(send, 400, error_body("bad_request", "invalid Content-Length"))
            return
        seen = 0
        started = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_body:
                    refused = True
                    if not started:
                        await _too_large(send, max_body, None)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent; whatever the app answers is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


async def _too_large(send: Send, limit: int, declared: int | None) -> None:
    size = f"{declared} bytes" if declared is not None else "more"
    await _respond(
        send, 413, error_body("too_large", f"request body is {size}, limit is {limit} bytes")
    )


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
