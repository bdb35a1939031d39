"""TOTP second factor (RFC 6238 via pyotp) with replay protection, and recovery codes.

:func:`verify_totp` accepts a code for the current 30-second step or one step either
side (clock drift), but only for a step later than the last one accepted, so a code
cannot be used twice. It returns the accepted step, which the caller stores.
Recovery codes are 16 base32 characters (80 bits) in groups of four; only their
SHA-256 is stored and each works once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

import pyotp

from bastion.errors import AuthError

STEP_SECONDS = 30
DRIFT_STEPS = 1
RECOVERY_CODES = 10
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def new_secret() -> str:
    """A fresh base32 TOTP secret (160 bits)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


def code_at(secret: str, step: int) -> str:
    """The 6-digit code for time step ``step``."""
    return pyotp.TOTP(secret).at(step * STEP_SECONDS)


def verify_totp(secret: str, code: str, now: dt.datetime, last_step: int | None) -> int:
    """The step ``code`` belongs to; AuthError if wrong, outside the window, or replayed."""
    current = int(now.timestamp()) // STEP_SECONDS
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(code_at(secret, step), code):
            if last_step is not None and step <= last_step:
                raise AuthError("TOTP code was already used")
            return step
    raise AuthError("wrong TOTP code")


def new_recovery_codes() -> list[str]:
    """Ten fresh recovery codes, e.g. ``ABCD-EFGH-IJKL-MNOP``."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_B32) for _ in range(16))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def recovery_hash(code: str) -> str:
    """SHA-256 of a normalised recovery code (case and dashes ignored)."""
    normal = code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(normal.encode()).hexdigest()
