"""The server's secret key and the box that seals secrets stored in its database.

Secrets the server must read back (today: users' TOTP seeds) are stored sealed with
AES-256-GCM under one server key, never in plaintext. A sealed value is the text
``sb1:<key id>:<base64 of nonce || ciphertext+tag>``; the associated data names what
the value is and whose (e.g. ``totp:<user id>``), so a sealed seed copied onto another
user's row does not open. The key id (first 8 bytes of SHA-256 of the key, hex) lets a
server started with the wrong key say so instead of reporting a forgery.

The key is addressed by URI like every bastion key (:class:`bastion.trust.keys.KeyUri`):
``file:PATH`` (or a bare path) holds exactly 32 random bytes, mode 0600. The server
creates it on first start when it is missing (written aside, then hard-linked
into place, so two processes starting together agree on one key); a key file
readable by group or others is refused.
``tpm:`` keys are not supported for this key yet (ConfigError).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion import limits
from bastion.errors import ConfigError, FormatError, VerificationError
from bastion.io.files import fsync_dir, read_bounded
from bastion.trust.keys import KeyUri

KEY_SIZE = 32
NONCE_SIZE = 12
PREFIX = "sb1"
KEY_FILE_NAME = "secret.key"


class SecretBox:
    """Seal and open short secrets with the server key (AES-256-GCM)."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ConfigError(f"server secret key is {len(key)} bytes, expected {KEY_SIZE}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id!r})"

    def seal(self, plaintext: str, context: str) -> str:
        """``plaintext`` sealed for ``context`` (e.g. ``totp:<user id>``)."""
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return f"{PREFIX}:{self.key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, value: str, context: str) -> str:
        """The plaintext of a sealed ``value``; raise unless it opens for ``context``.

        FormatError for something that is not a sealed value (a plaintext secret left
        in the database is refused, not used), ConfigError for another key, and
        VerificationError when the value was altered or belongs to another context.
        """
        parts = value.split(":")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise FormatError(f"stored secret for {context.split(':', 1)[0]} is not sealed")
        if not secrets.compare_digest(parts[1], self.key_id):
            raise ConfigError(
                f"stored secret was sealed with server key {parts[1]}, "
                f"this server has key {self.key_id}"
            )
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FormatError("stored secret is not valid base64") from exc
        if len(raw) < NONCE_SIZE + 16:
            raise FormatError(f"stored secret is {len(raw)} bytes, too short to be sealed")
        try:
            plain = self._aead.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], context.encode())
        except InvalidTag as exc:
            raise VerificationError(
                f"stored secret does not open for {context.split(':', 1)[0]}: "
                "altered, or copied from another row"
            ) from exc
        return plain.decode()


def is_sealed(value: str) -> bool:
    """True when ``value`` looks like a sealed value (not whether it opens)."""
    return value.startswith(PREFIX + ":")


def default_key_uri(data_dir: Path) -> str:
    """``file:<data_dir>/secret.key``."""
    return str(KeyUri("file", str(data_dir.resolve() / KEY_FILE_NAME)))


def load_secret_box(uri: str, *, create: bool) -> SecretBox:
    """The box for the key at ``uri``; with ``create``, make a missing file key (0600)."""
    parsed = KeyUri.parse(uri)
    if parsed.scheme != "file" or parsed.passphrase_env:
        raise ConfigError(
            f"server secret key {uri!r}: only an unencrypted file: key is supported "
            "(32 random bytes, mode 0600)"
        )
    path = Path(parsed.path)
    if create and not path.exists():
        _create_key_file(path)
    if not path.exists():
        raise ConfigError(
            f"server secret key {path} does not exist; it is created by 'bastion server init' "
            "or the first server start"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"server secret key {path} is readable by others (mode {oct(mode)}); chmod 600 it"
        )
    data = read_bounded(path, limits.KEY_FILE_MAX_SIZE, "server secret key")
    return SecretBox(data)


def _create_key_file(path: Path) -> None:
    """Write a fresh key beside ``path``, then link it into place (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, secrets.token_bytes(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
