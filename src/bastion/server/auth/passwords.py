"""Password hashing with argon2id (argon2-cffi), cost from the server settings.

:meth:`PasswordHasher.verify` raises :class:`~bastion.errors.AuthError` on a wrong
password. :meth:`PasswordHasher.burn` spends the same time as a verification for a
user that does not exist, so login timing does not reveal which e-mails have accounts.
"""

from __future__ import annotations

import contextlib

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bastion import limits
from bastion.errors import AuthError, FormatError


class PasswordHasher:
    """argon2id hashing and verification with fixed parameters."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        self._dummy = self._hasher.hash("bastion-dummy-password")

    def hash(self, password: str) -> str:
        """The PHC string (``$argon2id$v=19$m=...``) for ``password``."""
        check_password_policy(password)
        return self._hasher.hash(password)

    def verify(self, phc: str, password: str) -> None:
        """Raise AuthError unless ``password`` matches ``phc``."""
        if len(password) > limits.PASSWORD_MAX_LENGTH:
            raise AuthError("wrong e-mail or password")
        try:
            self._hasher.verify(phc, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError) as exc:
            raise AuthError("wrong e-mail or password") from exc

    def needs_rehash(self, phc: str) -> bool:
        """True when ``phc`` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(phc)

    def burn(self, password: str) -> None:
        """Spend one verification's time (for unknown users); always fails quietly."""
        with contextlib.suppress(VerifyMismatchError, VerificationError, InvalidHashError):
            self._hasher.verify(self._dummy, password[: limits.PASSWORD_MAX_LENGTH] + "x")


def check_password_policy(password: str) -> None:
    """Raise FormatError unless ``password`` has an acceptable length."""
    if len(password) < limits.PASSWORD_MIN_LENGTH:
        raise FormatError(
            f"password is {len(password)} characters, at least {limits.PASSWORD_MIN_LENGTH} needed"
        )
    if len(password) > limits.PASSWORD_MAX_LENGTH:
        raise FormatError(
            f"password is {len(password)} characters, at most {limits.PASSWORD_MAX_LENGTH} allowed"
        )
