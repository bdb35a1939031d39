"""Provisioning-key rules, pure: token format, hashing, admission checks, rate limiting.

A provisioning key is a bearer token ``bst_pk_...`` in the server's token format
(:mod:`bastion.server.auth.tokens`: 256 random bits + checksum) bound to one fleet.
The server keeps only its SHA-256. :func:`check_admission` decides whether a key may
enrol a given device *now* and raises the specific error otherwise (fail closed):
revoked -> RevokedError, expired -> ExpiredError, used up -> AuthError, wrong fleet ->
AuthError, serial / EK not on the allow-list -> PolicyError. :class:`RateLimiter` is a
per-key token bucket (in-process; see docs/adr/0008-provisioning.md).

Device API keys (``bst_dev_``) use the same token helpers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import threading
from dataclasses import dataclass, field

from bastion.errors import AuthError, ExpiredError, PolicyError, RateLimitError, RevokedError
from bastion.server.auth import tokens

PROVISIONING_PREFIX = "bst_pk_"
DEVICE_KEY_PREFIX = "bst_dev_"
DEFAULT_TTL = dt.timedelta(hours=1)


def new_token(prefix: str) -> str:
    """A fresh bearer token in the server's one token format (256 random bits + CRC)."""
    return tokens.new_token(prefix)[0]


def token_hash(token: str) -> str:
    """The stored form of a token: hex SHA-256 (tokens are high-entropy)."""
    return tokens.token_hash(token)


def token_has_prefix(token: str, prefix: str) -> bool:
    """True when ``token`` is well-formed (checksum included) and carries ``prefix``."""
    try:
        tokens.check_format(token, prefix)
    except AuthError:
        return False
    return True


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
    #: (serial, EK sha256) pairs: an entry naming both
    allow_devices: frozenset[tuple[str, str]] = frozenset()


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
    if not allow_listed(key, serial, ek_sha256):
        raise PolicyError(
            f"device serial {serial!r} / EK sha256 {ek_sha256[:16]}... is not on the "
            f"allow-list of provisioning key {key.key_id}"
        )


def has_allow_list(key: KeyState) -> bool:
    """True when the key restricts which devices it enrols."""
    return bool(key.allow_serials or key.allow_ek_hashes or key.allow_devices)


def allow_listed(key: KeyState, serial: str, ek_sha256: str) -> bool:
    """Whether the device passes the key's allow-list (True when the key has none).

    A pair entry matches when both its serial and its EK do. The flat lists form one
    entry each: with serials *and* EK hashes listed, a device must match both lists
    (a claimed serial alone, or an EK alone, is not enough).
    """
    if not has_allow_list(key):
        return True
    ek = ek_sha256.lower()
    if (serial, ek) in key.allow_devices:
        return True
    if not (key.allow_serials or key.allow_ek_hashes):
        return False
    serial_ok = not key.allow_serials or serial in key.allow_serials
    ek_ok = not key.allow_ek_hashes or ek in key.allow_ek_hashes
    return serial_ok and ek_ok


def ek_listed(key: KeyState, serial: str, ek_sha256: str) -> bool:
    """Whether the key names this EK (flat EK hash, or a pair with this serial): the
    proof the ``allow-list`` fleet policy asks for."""
    ek = ek_sha256.lower()
    return ek in key.allow_ek_hashes or (serial, ek) in key.allow_devices


@dataclass
class RateLimiter:
    """Token buckets keyed by provisioning-key id: ``per_minute`` attempts, burst = rate."""

    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key_id: str, per_minute: int, now: float) -> None:
        """Consume one attempt or raise RateLimitError (HTTP 429)."""
        if per_minute <= 0:
            return
        rate = per_minute / 60.0
        with self._lock:
            level, last = self._buckets.get(key_id, (float(per_minute), now))
            level = min(float(per_minute), level + (now - last) * rate)
            if level < 1.0:
                self._buckets[key_id] = (level, now)
                raise RateLimitError(
                    f"provisioning key {key_id} is over its rate limit of {per_minute}/min",
                    retry_after=(1.0 - level) / rate,
                )
            self._buckets[key_id] = (level - 1.0, now)
