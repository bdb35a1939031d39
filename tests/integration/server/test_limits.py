"""Bad input at the edge: body size, malformed JSON, validation messages, no stack traces."""

from __future__ import annotations

import pytest


def test_declared_oversize_body_is_413(make_app) -> None:
    from fastapi.testclient import TestClient

    app = make_app(max_body=1024)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(
            "/v1/auth/login",
            content=b"{" + b" " * 2000 + b"}",
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


def test_streamed_oversize_body_is_413(make_app) -> None:
    from fastapi.testclient import TestClient

    app = make_app(max_body=1024)

    def chunks():
        for _ in range(10):
            yield b" " * 500

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(
            "/v1/auth/login", content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "invalid request"),
        (b"[]", "invalid request"),
        (b'{"email": 5, "password": "x"}', "email"),
        (b'{"email": "a@b.c"}', "password"),
        (b'{"email": "a@b.c", "password": "x", "admin": true}', "admin"),
        (b"\xff\xfe", "invalid request"),
    ],
)
def test_malformed_json_is_a_clear_422(client, content, fragment) -> None:
    response = client.post(
        "/v1/auth/login", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid"
    assert fragment in body["detail"]
    assert "Traceback" not in response.text


def test_unexpected_exception_gives_opaque_500(make_app) -> None:
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    app = make_app()
    router = APIRouter()

    @router.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/boom")
    assert response.status_code == 500
    assert response.json()["error"] == "internal"
    assert "secret" not in response.text and "Traceback" not in response.text


def test_backend_error_hides_its_message(make_app) -> None:
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    from bastion.errors import BackendError

    app = make_app()
    router = APIRouter()

    @router.get("/v1/down")
    def down() -> None:
        raise BackendError("password=hunter2 at db host")

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/down")
    assert response.status_code == 503
    assert "hunter2" not in response.text
