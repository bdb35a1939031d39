"""Matrix rows of the operator's console: re-authentication, password, sessions, metrics.

Every route here is for a user holding a login *session* (personal API tokens get
403, the ``session`` level); ``/metrics`` takes no API credential at all: the matrix
client is not on loopback and sends no metrics token, so everyone gets 401.
"""

from __future__ import annotations

from typing import Any

from server_authz import PASSWORD, PRINCIPALS, USERS, Row, World

NEW_PASSWORD = "another correct horse"

LEVELS: dict[str, dict[str, int | str]] = {
    # /metrics: loopback or the metrics bearer token only (tests/.../test_metrics.py)
    "metrics_scraper": {p: 401 for p in PRINCIPALS},
}


def _fresh(world: World, who: str) -> dict[str, Any]:
    return {"headers": world.login(who)} if who in USERS else {}


def _other_session(world: World, who: str) -> dict[str, Any]:
    """A fresh calling session and the id of a second session of the same user."""
    if who not in USERS:
        return {"session_id": "0" * 32}
    calling = world.login(who)
    before = {s["id"] for s in world.client.get("/v1/me/sessions", headers=calling).json()}
    world.login(who)
    listed = world.client.get("/v1/me/sessions", headers=calling).json()
    # the session the second login made: every session has the same (fixed-clock) time,
    # so "the first one not current" could be the world's own session of ``who``
    other = next(s["id"] for s in listed if s["id"] not in before)
    return {"headers": calling, "session_id": other}


ROWS = [
    Row("POST", "/v1/auth/reauth", "session", body={"password": PASSWORD}),
    Row(
        "POST",
        "/v1/me/password",
        "session",
        body={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        setup=_fresh,
        fresh=True,
    ),
    Row("GET", "/v1/me/sessions", "session"),
    Row("DELETE", "/v1/me/sessions", "session", setup=_fresh, fresh=True),
    Row("DELETE", "/v1/me/sessions/{session_id}", "session", 204, setup=_other_session),
    Row("GET", "/metrics", "metrics_scraper"),
]
