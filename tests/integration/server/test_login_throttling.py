"""No lock-out by strangers (hardening item 6).

The caller's address is throttled first; failures against an account only slow every
attempt on it down (a bounded delay), so a correct login from another address still
succeeds. Throttled attempts and failed second factors are audited.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from bastion.io.clock import FixedClock
from bastion.server.audit.service import list_entries
from bastion.server.auth import totp
from bastion.server.auth.ratelimit import LoginDelay

PASSWORD = "correct horse battery"
ATTACKER = ("203.0.113.9", 40000)
OWNER = ("198.51.100.7", 40001)


def _events(app: Any) -> list[tuple[str, str, dict[str, Any]]]:
    import json

    with app.state.ctx.db.session(write=False) as session:
        return [
            (e.event, e.actor, json.loads(e.details))
            for e in list_entries(session, org_id=None, limit=500)
        ]


def _user(app: Any, email: str) -> str:
    from bastion.server.users import service

    ctx = app.state.ctx
    with ctx.db.session() as session:
        return service.create_user(ctx, session, email, PASSWORD, "cli:test").id


def _strict_app(make_app: Any, slept: list[float]) -> Any:
    app = make_app(
        login_rate_per_second=0.001, login_burst=3, login_failures_free=2, login_delay_max=0.5
    )
    app.state.ctx.login_delay.sleep = slept.append
    return app


def _login(client: TestClient, email: str, password: str, **extra: Any) -> int:
    body = {"email": email, "password": password, **extra}
    return client.post("/v1/auth/login", json=body).status_code


def test_guessing_from_one_address_does_not_lock_out_the_owner(make_app) -> None:
    slept: list[float] = []
    app = _strict_app(make_app, slept)
    _user(app, "victim@example.org")
    with TestClient(app, client=ATTACKER, raise_server_exceptions=False) as attacker:
        codes = [_login(attacker, "victim@example.org", "wrong guess " + str(i)) for i in range(6)]
        # the attacker's address is spent: even the right password is throttled there
        assert _login(attacker, "victim@example.org", PASSWORD) == 429
    assert codes == [401, 401, 401, 429, 429, 429]
    with TestClient(app, client=OWNER, raise_server_exceptions=False) as owner:
        assert _login(owner, "victim@example.org", PASSWORD) == 200
        # the owner's success cleared the account's delay
        slept.clear()
        assert _login(owner, "victim@example.org", PASSWORD) == 200
    assert slept == []


def test_failures_on_an_account_delay_but_never_refuse(make_app) -> None:
    slept: list[float] = []
    app = make_app(login_failures_free=2, login_delay_max=0.5)
    app.state.ctx.login_delay.sleep = slept.append
    _user(app, "victim@example.org")
    with TestClient(app, client=ATTACKER, raise_server_exceptions=False) as attacker:
        assert [_login(attacker, "victim@example.org", f"guess {i}x!") for i in range(5)] == [
            401
        ] * 5
    assert slept and max(slept) <= 0.5  # later guesses waited, bounded by login_delay_max
    slept.clear()
    with TestClient(app, client=OWNER, raise_server_exceptions=False) as owner:
        assert _login(owner, "victim@example.org", PASSWORD) == 200
    assert slept == [0.5]  # the owner waits too (no oracle), but gets in


def test_throttled_attempts_are_audited(make_app) -> None:
    slept: list[float] = []
    app = _strict_app(make_app, slept)
    with TestClient(app, client=ATTACKER, raise_server_exceptions=False) as attacker:
        for i in range(5):
            _login(attacker, f"user{i}@example.org", "some password")
    throttled = [e for e in _events(app) if e[0] == "user.login_throttled"]
    assert len(throttled) == 2
    assert throttled[0][1] == f"anonymous@{ATTACKER[0]}"
    assert throttled[0][2]["email"] == "user3@example.org"


@pytest.mark.parametrize(
    ("extra", "method"),
    [
        ({"totp": "WRONG"}, "totp"),  # replaced below by a wrong 6-digit code
        ({"recovery_code": "AAAA-BBBB-CCCC-DDDD"}, "recovery_code"),
    ],
)
def test_failed_second_factor_is_audited(
    make_app, clock: FixedClock, extra: dict[str, str], method: str
) -> None:
    app = make_app()
    user_id = _user(app, "two@example.org")
    with TestClient(app, client=OWNER, raise_server_exceptions=False) as client:
        token = client.post(
            "/v1/auth/login", json={"email": "two@example.org", "password": PASSWORD}
        ).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        secret = client.post("/v1/me/totp", headers=headers).json()["secret"]
        step = int(clock.now().timestamp()) // 30
        assert (
            client.post(
                "/v1/me/totp/confirm", headers=headers, json={"code": totp.code_at(secret, step)}
            ).status_code
            == 200
        )
        if method == "totp":
            valid = {totp.code_at(secret, s) for s in range(step - 1, step + 2)}
            extra = {"totp": next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in valid)}
        assert _login(client, "two@example.org", PASSWORD, **extra) == 401
    failed = [e for e in _events(app) if e[0] == "user.second_factor_failed"]
    assert len(failed) == 1
    assert failed[0][2]["user"] == user_id and failed[0][2]["method"] == method


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 0.0), (2, 0.0), (3, 0.5), (4, 1.0), (5, 2.0), (9, 2.0)],
)
def test_login_delay_table(failures: int, expected: float) -> None:
    delay = LoginDelay(lambda: 100.0, lambda _s: None, free=3, max_seconds=2.0, base=0.5)
    for _ in range(failures):
        delay.failed("email:a@example.org")
    assert delay.delay_for("email:a@example.org") == expected
    assert delay.delay_for("email:other@example.org") == 0.0


def test_login_delay_drains_and_clears() -> None:
    now = [0.0]
    delay = LoginDelay(lambda: now[0], lambda _s: None, free=1, max_seconds=2.0, base=1.0)
    for _ in range(3):
        delay.failed("k")
    assert delay.delay_for("k") == 2.0
    now[0] += 120.0  # two failures drained at one per minute
    assert delay.delay_for("k") == 1.0
    delay.succeeded("k")
    assert delay.delay_for("k") == 0.0
