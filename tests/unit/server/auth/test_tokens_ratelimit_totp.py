"""Pure pieces of server auth: token format and checksum, token buckets, TOTP window."""

from __future__ import annotations

import datetime as dt

import pytest

from bastion.errors import AuthError, RateLimitError
from bastion.server.auth import tokens, totp
from bastion.server.auth.ratelimit import RateLimiter


def test_token_shape_and_hash() -> None:
    token, digest = tokens.new_token(tokens.PAT_PREFIX)
    assert token.startswith("bst_pat_") and len(token) == 8 + 43 + 6
    assert digest == tokens.token_hash(token) and len(digest) == 64
    tokens.check_format(token, tokens.PAT_PREFIX)
    assert tokens.token_hint(token) == f"bst_pat_...{token[-4:]}"
    assert tokens.new_token(tokens.PAT_PREFIX)[0] != token


def _flip(token: str, index: int) -> str:
    c = token[index]
    return token[:index] + ("A" if c != "A" else "B") + token[index + 1 :]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda t: t[:-1], id="truncated"),
        pytest.param(lambda t: t + "A", id="extended"),
        pytest.param(lambda t: _flip(t, 20), id="flipped-random-part"),
        pytest.param(lambda t: _flip(t, len(t) - 1), id="flipped-checksum"),
        pytest.param(lambda t: t.replace("bst_pat_", "bst_ses_"), id="other-prefix"),
        pytest.param(lambda t: t[:10] + "-" + t[11:], id="bad-character"),
        pytest.param(lambda t: "", id="empty"),
    ],
)
def test_token_format_negative_table(mutate) -> None:
    token, _ = tokens.new_token(tokens.PAT_PREFIX)
    with pytest.raises(AuthError):
        tokens.check_format(mutate(token), tokens.PAT_PREFIX)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_burst_refill_and_keys() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock)
    for _ in range(3):
        limiter.hit("a")
    with pytest.raises(RateLimitError) as info:
        limiter.hit("a")
    assert 0 < info.value.retry_after <= 0.5
    limiter.hit("b")  # another key has its own bucket
    clock.t += 0.5  # one token back
    limiter.hit("a")
    with pytest.raises(RateLimitError):
        limiter.hit("a")
    clock.t += 100  # refill caps at the burst
    for _ in range(3):
        limiter.hit("a")
    with pytest.raises(RateLimitError):
        limiter.hit("a")


def test_token_bucket_bounded_keys() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock, max_keys=10)
    for i in range(100):
        limiter.hit(f"k{i}")
    assert len(limiter._buckets) == 10


def test_try_hit_takes_a_token_or_answers_false_without_taking_one() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock)
    assert limiter.try_hit("a") and limiter.try_hit("a")
    assert not limiter.try_hit("a")  # empty: no error, nothing taken
    clock.t += 1.0
    limiter.hit("a")  # the refilled token is still there for the full path
    assert not limiter.try_hit("a")


NOW = dt.datetime(2026, 1, 1, 12, 0, 15, tzinfo=dt.UTC)
STEP = int(NOW.timestamp()) // 30
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.mark.parametrize(
    ("offset", "last", "ok"),
    [
        (0, None, True),
        (-1, None, True),
        (1, None, True),
        (-2, None, False),  # outside the drift window
        (2, None, False),
        (0, STEP, False),  # replay of the last accepted step
        (-1, STEP - 1, False),  # an older step after a newer one was used
        (1, STEP, True),
    ],
)
def test_totp_window_and_replay(offset: int, last: int | None, ok: bool) -> None:
    code = totp.code_at(SECRET, STEP + offset)
    if ok:
        assert totp.verify_totp(SECRET, code, NOW, last) == STEP + offset
    else:
        with pytest.raises(AuthError):
            totp.verify_totp(SECRET, code, NOW, last)


def test_recovery_codes_unique_and_normalised() -> None:
    codes = totp.new_recovery_codes()
    assert len(set(codes)) == 10
    assert all(len(c) == 19 and c.count("-") == 3 for c in codes)
    assert totp.recovery_hash(codes[0].lower().replace("-", " ")) == totp.recovery_hash(codes[0])
