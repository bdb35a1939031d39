"""Bearer secrets: generation, checksum, and the hash under which they are stored.

A token is ``<prefix><43 base62 characters><6 base62 characters of CRC-32>``, e.g.
``bst_pat_3kT...``. The random part carries 256 bits; the checksum lets secret
scanners (and the server, before touching the database) tell a real token from a typo
offline, as GitHub's token format does. Only ``token_hash(token)`` (SHA-256, hex) is
stored: the tokens are high-entropy, so a fast hash is safe and lookups are indexed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib

from bastion.errors import AuthError

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
RANDOM_LENGTH = 43  # 43 * log2(62) = 256.1 bits
CHECK_LENGTH = 6

SESSION_PREFIX = "bst_ses_"
PAT_PREFIX = "bst_pat_"


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        out.append(ALPHABET[rem])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECK_LENGTH)


def new_token(prefix: str) -> tuple[str, str]:
    """A fresh token with ``prefix`` and its storage hash: ``(token, token_hash)``."""
    body = prefix + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    token = body + _checksum(body)
    return token, token_hash(token)


def check_format(token: str, prefix: str) -> None:
    """Raise AuthError unless ``token`` is well-formed for ``prefix`` with a valid checksum."""
    expected_len = len(prefix) + RANDOM_LENGTH + CHECK_LENGTH
    if not token.startswith(prefix) or len(token) != expected_len:
        raise AuthError(f"token is not a well-formed {prefix}... token")
    body, check = token[:-CHECK_LENGTH], token[-CHECK_LENGTH:]
    if any(c not in ALPHABET for c in token[len(prefix) :]) or not hmac.compare_digest(
        check, _checksum(body)
    ):
        raise AuthError(f"token is not a well-formed {prefix}... token (checksum)")


def token_hash(token: str) -> str:
    """SHA-256 of the token, hex: the only form stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_hint(token: str) -> str:
    """A non-secret reminder of a token for listings: prefix and last four characters."""
    prefix = token[: token.index("_", 4) + 1] if token.count("_") >= 2 else ""
    return f"{prefix}...{token[-4:]}"


def hmac_equal(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode(), b.encode())
