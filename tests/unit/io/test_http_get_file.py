"""``HttpClient.get_file``: static files whose status the caller reads (TUF metadata, bundles)."""

from __future__ import annotations

import httpx
import pytest

from bastion.errors import ConfigError, LimitError, TransportError
from bastion.io.http import HttpClient


def _client(handler: object) -> HttpClient:
    return HttpClient("http://127.0.0.1:1", transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_any_status_is_returned_with_its_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("2.root.json"):
            return httpx.Response(404, content=b"<html>not found</html>")
        return httpx.Response(200, content=b"x" * 100)

    with _client(handler) as c:
        assert c.get_file("/m/1.root.json", max_bytes=100).content == b"x" * 100
        missing = c.get_file("http://127.0.0.1:1/m/2.root.json", max_bytes=100)
        assert missing.status == 404


def test_body_bounded_and_failures_wrapped() -> None:
    big = _client(lambda _r: httpx.Response(200, content=b"x" * 101))
    with big as c, pytest.raises(LimitError, match="over 100 bytes"):
        c.get_file("/f", max_bytes=100)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with _client(refuse) as c, pytest.raises(TransportError, match="refused"):
        c.get_file("/f", max_bytes=10)
    with _client(refuse) as c, pytest.raises(ConfigError, match="plain http"):
        c.get_file("http://updates.example/f", max_bytes=10)
