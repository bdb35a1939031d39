"""One-time codes stay one-time under concurrency (hardening item 3).

Eight threads log in at the same instant with the same TOTP code (then the same
recovery code), each through the real service on its own database session, on SQLite
and on PostgreSQL. Exactly one login may succeed; the others are refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from bastion.errors import AuthError
from bastion.server.auth import totp
from bastion.server.users import service

PASSWORD = "correct horse battery"
RACERS = 8


def _enrol(api: Any, clock: Any, email: str) -> tuple[str, list[str], int]:
    session = api.user_and_login(email)
    secret = api.client.post("/v1/me/totp", headers=session).json()["secret"]
    step = int(clock.now().timestamp()) // 30
    confirm = api.client.post(
        "/v1/me/totp/confirm", headers=session, json={"code": totp.code_at(secret, step)}
    )
    assert confirm.status_code == 200, confirm.text
    clock.advance(30)
    return secret, confirm.json()["recovery_codes"], step + 1


def _race(ctx: Any, attempt: Callable[[Any], Any]) -> tuple[int, list[BaseException]]:
    """Run ``attempt(session)`` in RACERS threads released together; (successes, errors)."""
    barrier = threading.Barrier(RACERS)
    wins: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        with ctx.db.session() as session:
            barrier.wait()
            try:
                result = attempt(session)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
            else:
                with lock:
                    wins.append(result)

    threads = [threading.Thread(target=run) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return len(wins), errors


def test_one_totp_code_wins_one_concurrent_login(api, clock) -> None:
    secret, _codes, step = _enrol(api, clock, "race@example.org")
    code = totp.code_at(secret, step)
    wins, errors = _race(
        api.ctx,
        lambda s: service.login(
            api.ctx,
            s,
            "race@example.org",
            PASSWORD,
            totp_code=code,
            recovery_code=None,
            client="10.0.0.1",
        ),
    )
    assert wins == 1, errors
    assert len(errors) == RACERS - 1
    assert all(isinstance(e, AuthError) for e in errors), errors
    # and the code stays spent afterwards
    replay = api.client.post(
        "/v1/auth/login",
        json={"email": "race@example.org", "password": PASSWORD, "totp": code},
    )
    assert replay.status_code == 401


def test_one_recovery_code_wins_one_concurrent_login(api, clock) -> None:
    _secret, codes, _step = _enrol(api, clock, "race2@example.org")
    wins, errors = _race(
        api.ctx,
        lambda s: service.login(
            api.ctx,
            s,
            "race2@example.org",
            PASSWORD,
            totp_code=None,
            recovery_code=codes[3],
            client="10.0.0.2",
        ),
    )
    assert wins == 1, errors
    assert len(errors) == RACERS - 1
    assert all(isinstance(e, AuthError) for e in errors), errors
    # another code still works once
    assert (
        api.client.post(
            "/v1/auth/login",
            json={"email": "race2@example.org", "password": PASSWORD, "recovery_code": codes[4]},
        ).status_code
        == 200
    )
