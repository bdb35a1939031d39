"""RouteTemplates: the metrics label of a request, remembered per (path, method).

The remembered answer must be exactly the scan's (first template whose path and method
match, else the first whose path matches, else ``<unmatched>``), whatever the order of
calls, and the memory must stay bounded when every request has a new path.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from bastion.server.metrics.routes import UNMATCHED, RouteTemplates


def _app() -> FastAPI:
    app = FastAPI()
    inner = APIRouter(prefix="/v1/items")

    @inner.get("/{item_id}")
    def one(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    @inner.get("/static")  # shadowed by the template above: the router's order wins
    def static() -> dict[str, str]:
        return {}

    @inner.post("/new")
    def new() -> dict[str, str]:
        return {}

    app.include_router(inner)

    @app.get("/v1/device/config")
    def config() -> dict[str, str]:
        return {}

    return app


CASES = [
    ("/v1/items/abc", "GET", "/v1/items/{item_id}"),
    ("/v1/items/static", "GET", "/v1/items/{item_id}"),
    ("/v1/items/new", "POST", "/v1/items/new"),
    ("/v1/items/new", "GET", "/v1/items/{item_id}"),
    ("/v1/items/abc", "DELETE", "/v1/items/{item_id}"),  # path only: the router's 405
    ("/v1/device/config", "GET", "/v1/device/config"),
    ("/v1/device/config", "PUT", "/v1/device/config"),
    ("/v1/no-such", "GET", UNMATCHED),
    ("/v1/items/a/b", "GET", UNMATCHED),
]


def test_remembered_answers_equal_the_scan_in_any_order() -> None:
    templates = RouteTemplates(_app())
    for _ in range(3):
        for path, method, expected in CASES + CASES[::-1]:
            assert templates(path, method) == expected, (path, method)
            assert templates._scan(path, method) == expected, (path, method)


def test_memory_is_bounded_when_every_path_is_new() -> None:
    templates = RouteTemplates(_app())
    for i in range(RouteTemplates.MEMO_SIZE + 500):
        assert templates(f"/v1/items/{i}", "GET") == "/v1/items/{item_id}"
    assert templates._memo.cache_info().currsize == RouteTemplates.MEMO_SIZE  # type: ignore[attr-defined]
    assert templates("/v1/device/config", "GET") == "/v1/device/config"
