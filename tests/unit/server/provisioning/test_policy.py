"""server/provisioning/policy: admission negative table, tokens, rate limiter."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from bastion.errors import AuthError, ExpiredError, PolicyError, RateLimitError, RevokedError
from bastion.server.provisioning import policy as pol

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
EK = "ab" * 32
BASE = pol.KeyState(
    key_id="pk1",
    fleet_id="fleet-a",
    expires_at=NOW + dt.timedelta(hours=1),
    max_uses=3,
    uses=0,
    revoked=False,
)


def test_good_key_admits() -> None:
    pol.check_admission(BASE, now=NOW, serial="s1", ek_sha256=EK, fleet_id="fleet-a")
    allow = dataclasses.replace(BASE, allow_serials=frozenset({"s1"}))
    pol.check_admission(allow, now=NOW, serial="s1", ek_sha256=EK)
    allow_ek = dataclasses.replace(BASE, allow_ek_hashes=frozenset({EK}))
    pol.check_admission(allow_ek, now=NOW, serial="other", ek_sha256=EK.upper())


@pytest.mark.parametrize(
    ("case", "change", "kwargs", "error"),
    [
        ("revoked", {"revoked": True}, {}, RevokedError),
        ("expired exactly now", {"expires_at": NOW}, {}, ExpiredError),
        ("expired long ago", {"expires_at": NOW - dt.timedelta(days=1)}, {}, ExpiredError),
        ("used up", {"uses": 3}, {}, AuthError),
        ("over used", {"uses": 9}, {}, AuthError),
        ("wrong fleet", {}, {"fleet_id": "fleet-b"}, AuthError),
        ("serial not allowed", {"allow_serials": frozenset({"s2"})}, {}, PolicyError),
        ("EK not allowed", {"allow_ek_hashes": frozenset({"cd" * 32})}, {}, PolicyError),
        (
            "neither allowed",
            {"allow_serials": frozenset({"s2"}), "allow_ek_hashes": frozenset({"cd" * 32})},
            {},
            PolicyError,
        ),
        ("naive expiry in the past", {"expires_at": dt.datetime(2025, 1, 1)}, {}, ExpiredError),
    ],
)
def test_admission_refused(case, change, kwargs, error) -> None:  # type: ignore[no-untyped-def]
    key = dataclasses.replace(BASE, **change)
    args = {"serial": "s1", "ek_sha256": EK} | kwargs
    with pytest.raises(error):
        pol.check_admission(key, now=NOW, **args)


def test_tokens() -> None:
    token = pol.new_token(pol.PROVISIONING_PREFIX)
    assert token.startswith("bst_pk_") and len(token) == 7 + 43 + 6
    assert pol.token_has_prefix(token, pol.PROVISIONING_PREFIX)
    assert not pol.token_has_prefix(token, pol.DEVICE_KEY_PREFIX)
    assert not pol.token_has_prefix(token[:-1], pol.PROVISIONING_PREFIX)
    assert not pol.token_has_prefix("bst_pk_" + "!" * 49, pol.PROVISIONING_PREFIX)
    assert not pol.token_has_prefix(
        token[:-1] + ("A" if token[-1] != "A" else "B"), pol.PROVISIONING_PREFIX
    )
    assert pol.token_hash(token) != pol.token_hash(pol.new_token(pol.PROVISIONING_PREFIX))
    assert len(pol.token_hash(token)) == 64
    assert pol.display_prefix(token) == token[:12]
    dev = pol.new_token(pol.DEVICE_KEY_PREFIX)
    assert pol.display_prefix(dev) == dev[:13]


def test_rate_limiter() -> None:
    limiter = pol.RateLimiter()
    for _ in range(3):
        limiter.take("k", 3, now=0.0)
    with pytest.raises(RateLimitError):
        limiter.take("k", 3, now=1.0)
    limiter.take("other", 3, now=1.0)  # buckets are per key
    limiter.take("k", 3, now=21.0)  # one token back after 20 s at 3/min
    with pytest.raises(AuthError):
        limiter.take("k", 3, now=21.5)
    for _ in range(100):
        limiter.take("unlimited", 0, now=0.0)
