"""The one HTTP client and the one wire-error codec (src/bastion/io/http.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion import errors, limits
from bastion.errors import (
    AuthError,
    BackendError,
    BastionError,
    ConfigError,
    FormatError,
    LimitError,
    RateLimitError,
    TransportError,
)
from bastion.io import http as wire
from bastion.io.http import WIRE_ERRORS, HttpClient, decode_error, encode_error

SRC = Path(__file__).resolve().parents[3] / "src" / "bastion"


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.MockTransport(lambda _req: httpx.Response(status, content=raw, headers=headers))


# --- one table, both directions ------------------------------------------------------------------


def test_server_emit_table_and_client_decode_table_are_one() -> None:
    from bastion.server import errors as server_errors
    from bastion.server.client import ERROR_CODES

    derived = {code: w.error for code, w in WIRE_ERRORS.items()}
    assert dict(server_errors.CODE_TO_ERROR) == derived
    assert derived == ERROR_CODES
    assert server_errors.encode_error is encode_error  # the handler emits through the codec


@pytest.mark.parametrize("code", sorted(WIRE_ERRORS))
def test_every_code_round_trips_to_the_same_class(code: str) -> None:
    cls = WIRE_ERRORS[code].error
    status, again = encode_error(cls("x"), authenticated=code != "unauthenticated")
    assert WIRE_ERRORS[again].error is cls
    assert status == WIRE_ERRORS[again].status
    decoded = decode_error(status, json.dumps({"error": again, "detail": "d"}).encode(), what="t")
    assert type(decoded) is cls


@pytest.mark.parametrize("code", sorted(WIRE_ERRORS))
def test_every_client_path_raises_the_table_class(code: str) -> None:
    """Operator client, provisioning and attestation decode each code the same way."""
    from bastion.device.provision import _post
    from bastion.server.client import ApiClient

    wire_error = WIRE_ERRORS[code]
    body = {"error": code, "detail": "refused"}
    transport = _answer(wire_error.status, body)
    with (
        ApiClient("http://127.0.0.1:1", "bst_x", transport=transport) as api,
        pytest.raises(BastionError) as operator,
    ):
        api.call("GET", "/v1/fleets")
    with (
        HttpClient("http://127.0.0.1:1", transport=transport) as device,
        pytest.raises(BastionError) as provisioning,
    ):
        _post(device, "/v1/enroll/begin", {}, "bst_pk_x")
    assert type(operator.value) is wire_error.error
    assert type(provisioning.value) is wire_error.error
    assert "refused" in str(operator.value)


def test_every_server_error_class_gets_a_known_code() -> None:
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, BastionError) and c is not BastionError
    ]
    for cls in classes:
        for authenticated in (False, True):
            status, code = encode_error(cls.__new__(cls), authenticated=authenticated)
            assert WIRE_ERRORS[code].status == status
            assert isinstance(cls.__new__(cls), WIRE_ERRORS[code].error) or code in {
                "unauthenticated",  # expired/revoked credentials
                "internal",
            }


# --- decoding negatives --------------------------------------------------------------------------

UNKNOWN = [
    (403, b'{"error": "no_such_code", "detail": "x"}', AuthError),
    (401, b"not json", AuthError),
    (500, b"<html>oops</html>", TransportError),
    (502, b"", TransportError),
    (418, b'{"error": 7}', TransportError),
    (400, b'{"error": "bad_request", "error": "internal"}', TransportError),  # duplicate key
    (503, b'[{"error": "unavailable"}]', TransportError),
]


@pytest.mark.parametrize(("status", "body", "cls"), UNKNOWN)
def test_unknown_or_malformed_error_bodies(status: int, body: bytes, cls: type) -> None:
    assert type(decode_error(status, body, what="GET /x")) is cls


def test_rate_limit_keeps_retry_after() -> None:
    body = b'{"error": "rate_limited", "detail": "slow down"}'
    exc = decode_error(429, body, what="POST /x", retry_after="7")
    assert isinstance(exc, RateLimitError)
    assert exc.retry_after == 7.0
    bad = decode_error(429, body, what="POST /x", retry_after="soon")
    assert isinstance(bad, RateLimitError)
    assert bad.retry_after == 1.0


# --- the client ----------------------------------------------------------------------------------

REFUSED_URLS = [
    "http://fleet.example.com",
    "http://10.0.0.1:8443",
    "http://[2001:db8::1]",
    "ftp://127.0.0.1",
    "127.0.0.1:8443",
    "https://",
    "http://[::1",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_plain_http_to_a_remote_host_and_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        HttpClient(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8443/", "http://localhost", "http://[::1]:80", "https://h.example"]
)
def test_https_and_loopback_http_are_accepted(url: str) -> None:
    with HttpClient(url) as client:
        assert client.server == url.rstrip("/")


def test_answer_over_the_limit_is_refused() -> None:
    big = b'{"a": "' + b"x" * 2000 + b'"}'
    with (
        HttpClient("http://127.0.0.1:1", transport=_answer(200, big), max_response=1000) as c,
        pytest.raises(LimitError),
    ):
        c.call("GET", "/big")
    assert limits.HTTP_MAX_RESPONSE >= limits.HTTP_MAX_BODY


@pytest.mark.parametrize(
    "body", [b'{"a": 1, "a": 2}', b"{nope", b"[" * 200 + b"]" * 200, b"\xff\xfe"]
)
def test_answers_go_through_the_strict_json_loader(body: bytes) -> None:
    with (
        HttpClient("http://127.0.0.1:1", transport=_answer(200, body)) as c,
        pytest.raises(FormatError),
    ):
        c.call("GET", "/x")


def test_object_answers_and_bearer_token() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=[1, 2])

    with HttpClient("http://127.0.0.1:1", transport=httpx.MockTransport(handler)) as c:
        assert c.call("GET", "/x", token="bst_k") == [1, 2]
        with pytest.raises(FormatError):
            c.call_object("GET", "/x")
    assert seen == ["Bearer bst_k", None]


def test_transport_failure_is_a_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with (
        HttpClient("http://127.0.0.1:1", transport=httpx.MockTransport(handler)) as c,
        pytest.raises(TransportError),
    ):
        c.call("GET", "/x")


def test_server_hides_backend_messages() -> None:
    assert frozenset(WIRE_ERRORS) - {"unavailable", "internal"} == wire.PUBLIC_DETAIL
    assert encode_error(BackendError("db password wrong"), authenticated=True) == (
        503,
        "unavailable",
    )


# --- every client path goes through io/http.py ---------------------------------------------------

#: the only modules of src that may use httpx: the one client, and the server's own
#: outbound calls to an OpenID provider and to webhook receivers (not bastion APIs, no
#: bastion error codes)
HTTPX_ALLOWED = {"io/http.py", "server/oidc/provider.py", "server/webhooks/worker.py"}


def test_no_httpx_outside_the_one_client() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in HTTPX_ALLOWED:
            continue
        if re.search(r"^\s*(import httpx|from httpx)|\bhttpx\.", path.read_text(), re.M):
            offenders.append(rel)
    assert offenders == []


def test_client_modules_use_the_one_client() -> None:
    for rel in ("server/client.py", "device/provision.py", "device/attest.py"):
        text = (SRC / rel).read_text()
        assert "from bastion.io.http import" in text, rel
        assert "_ERRORS" not in text.replace("WIRE_ERRORS", ""), rel  # no private table
