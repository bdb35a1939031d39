"""Provisioning-key rules, pure: token format, hashing, admission checks, rate limiting.

A provisioning key is a bearer token ``bst_pk_<43 chars>`` (256 random bits) bound to one
fleet. The server keeps only its SHA-256. :func:`check_admission` decides whether a key
may enrol a given device *now* and raises the specific error otherwise (fail closed):
revoked -> RevokedError, expired -> ExpiredError, used up -> AuthError, wrong fleet ->
AuthError, serial / EK not on the allow-list -> PolicyError. :class:`RateLimiter` is a
per-key token bucket (in-process; see docs/adr/0008-provisioning.md).

Device API keys (``bst_dev_``) use the same token helpers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass, field

from bastion.errors import AuthError, ExpiredError, PolicyError, RevokedError

PROVISIONING_PREFIX = "bst_pk_"
DEVICE_KEY_PREFIX = "bst_dev_"
DEFAULT_TTL = dt.timedelta(hours=1)
_TOKEN_RE = re.compile(r"^(bst_[a-z]+_)[A-Za-z0-9_-]{43}$")


def new_token(prefix: str) -> str:
    """A fresh bearer token: ``prefix`` + 256 random bits, url-safe base64."""
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The stored form of a token: hex SHA-256 (tokens are high-entropy)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_has_prefix(token: str, prefix: str) -> bool:
    """True when ``token`` is well-formed and carries ``prefix``."""
    match = _TOKEN_RE.match(token)
    return bool(match) and match.group(1) == prefix  # type: ignore[union-attr]


def display_prefix(token: str) -> str:
    """The part of a token safe to show in lists (prefix + 5 characters)."""
    return token[: token.index("_", 4) + 6]


def ek_hash(ek_public: bytes) -> str:
    """The allow-list form of an EK: hex SHA-256 of its TPM2B_PUBLIC bytes."""
    return hashlib.sha256(ek_public).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the admission check needs to know about a stored provisioning key."""

    key_id: str
    fleet_id: str
    expires_at: dt.datetime
    max_uses: int
    uses: int
    revoked: bool
    allow_serials: frozenset[str] = frozenset()
    allow_ek_hashes: frozenset[str] = frozenset()


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def check_admission(
    key: KeyState,
    *,
    now: dt.datetime,
    serial: str,
    ek_sha256: str,
    fleet_id: str | None = None,
) -> None:
    """Raise unless ``key`` may enrol the device ``serial`` with that EK hash now."""
    if key.revoked:
        raise RevokedError(f"provisioning key {key.key_id} is revoked")
    if _aware(now) >= _aware(key.expires_at):
        raise ExpiredError(
            f"provisioning key {key.key_id} expired at {_aware(key.expires_at).isoformat()}"
        )
    if key.uses >= key.max_uses:
        raise AuthError(
            f"provisioning key {key.key_id} is used up ({key.uses} of {key.max_uses} uses)"
        )
    if fleet_id is not None and not hmac.compare_digest(fleet_id, key.fleet_id):
        raise AuthError(f"provisioning key {key.key_id} is for another fleet, not {fleet_id}")
    if key.allow_serials or key.allow_ek_hashes:
        serial_ok = serial in key.allow_serials
        ek_ok = ek_sha256.lower() in key.allow_ek_hashes
        if not (serial_ok or ek_ok):
            raise PolicyError(
                f"device serial {serial!r} / EK sha256 {ek_sha256[:16]}... is not on the "
                f"allow-list of provisioning key {key.key_id}"
            )


@dataclass
class RateLimiter:
    """Token buckets keyed by provisioning-key id: ``per_minute`` attempts, burst = rate."""

    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key_id: str, per_minute: int, now: float) -> None:
        """Consume one attempt or raise AuthError (HTTP 429 at the edge: see routes)."""
        if per_minute <= 0:
            return
        rate = per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                raise RateLimitedError(
                    f"provisioning key {key_id} is over its rate limit of {per_minute}/min"
                )
            self._buckets[key_id] = (tokens - 1.0, now)


class RateLimitedError(AuthError):
    """Too many attempts with one credential; the HTTP edge answers 429."""
