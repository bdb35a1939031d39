"""The audit key, kept outside the database: open it by URI, create the default, attach it.

``settings.audit_key`` (``BASTION_SERVER_AUDIT_KEY``) is a key URI:

* unset: the HMAC key file ``DATA_DIR/audit.key``, created 0600 on first start;
* ``file:PATH`` or a bare path: an HMAC key file (one line
  ``bastion-audit-hmac-sha256:<64 hex>``), or a PEM private key used as a Signer;
* ``tpm:BACKEND#KEYFILE``: a non-exportable TPM key used as a Signer.

An HMAC key file must not be readable by group or others (ConfigError otherwise).
Auditors verify checkpoints offline with :func:`open_audit_verifier`: the HMAC key
file, or the public key / certificate of a Signer key.

The open key is attached to the app's :class:`~bastion.server.db.engine.Database`
(``session.info``), so :func:`bastion.server.audit.service.record` finds it in any
session the app opens; private key bytes never pass through service code.
"""

from __future__ import annotations

import secrets
import stat
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import ConfigError, FormatError
from bastion.io.files import atomic_write, read_bounded
from bastion.server.audit.chain import (
    AuditKey,
    AuditVerifier,
    HmacAuditKey,
    PublicAuditKey,
    SignerAuditKey,
)
from bastion.trust.keys import KeyUri, load_public_key, open_signer
from bastion.trust.signer import Verifier

HMAC_KEY_PREFIX = b"bastion-audit-hmac-sha256:"
DEFAULT_KEY_FILE = "audit.key"
SESSION_INFO_KEY = "bastion.audit_key"


def hmac_key_file_bytes(secret: bytes) -> bytes:
    """The HMAC key file's content for ``secret``."""
    return HMAC_KEY_PREFIX + secret.hex().encode() + b"\n"


def parse_hmac_key_file(data: bytes, what: str) -> HmacAuditKey:
    """An HMAC key from its file's bytes; FormatError if malformed."""
    text = data.strip()
    if not text.startswith(HMAC_KEY_PREFIX):
        raise FormatError(f"{what} is not an audit HMAC key file")
    try:
        secret = bytes.fromhex(text[len(HMAC_KEY_PREFIX) :].decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{what}: the key is not hex") from exc
    return HmacAuditKey(secret)


def _private_mode(path: Path, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{what} has mode {mode:04o}: expected 0600 (chmod 600 {path})")


def create_hmac_key_file(path: Path) -> None:
    """Write a fresh random HMAC key, mode 0600 (its folder 0700 if new)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, hmac_key_file_bytes(secrets.token_bytes(32)), mode=0o600)


def open_audit_key(uri: str | None, data_dir: Path, *, create: bool) -> AuditKey:
    """The server's audit key (see the module docstring); ``create`` makes the default."""
    if uri is None:
        path = data_dir / DEFAULT_KEY_FILE
        if not path.exists():
            if not create:
                raise ConfigError(f"no audit key {path}: give --data-dir or set the audit key")
            create_hmac_key_file(path)
        return _open_file_key(str(path), None)
    parsed = KeyUri.parse(uri)
    if parsed.scheme == "tpm":
        return SignerAuditKey(open_signer(parsed))
    return _open_file_key(parsed.path, parsed)


def _open_file_key(path_text: str, parsed: KeyUri | None) -> AuditKey:
    path = Path(path_text)
    what = f"audit key {path}"
    if not path.is_file():
        raise ConfigError(f"{what} does not exist")
    data = read_bounded(path, limits.KEY_FILE_MAX_SIZE, what)
    if data.lstrip().startswith(HMAC_KEY_PREFIX):
        _private_mode(path, what)
        return parse_hmac_key_file(data, what)
    return SignerAuditKey(open_signer(parsed or KeyUri("file", path_text)))


def open_audit_verifier(path: Path) -> AuditVerifier:
    """What an auditor checks a checkpoint with: the HMAC key file, or a public key,
    certificate or private key PEM of the Signer key."""
    what = f"audit key {path}"
    data = read_bounded(path, limits.KEY_FILE_MAX_SIZE, what)
    if data.lstrip().startswith(HMAC_KEY_PREFIX):
        return parse_hmac_key_file(data, what)
    if b"PRIVATE KEY" in data:
        return SignerAuditKey(open_signer(KeyUri("file", str(path))))
    return PublicAuditKey(Verifier.of(load_public_key(data, what=what)))


def attach(db: Any, key: AuditKey) -> None:
    """Make ``key`` the audit key of every session ``db`` opens from now on."""
    db.set_session_info(SESSION_INFO_KEY, key)


def session_key(session: Session) -> AuditKey:
    """The audit key attached to this session's database; ConfigError if none (fail closed)."""
    key = session.info.get(SESSION_INFO_KEY)
    if key is None:
        raise ConfigError("no audit key is attached to this database: audit entries refused")
    return key  # type: ignore[no-any-return]


def install_audit_key(settings: Any, db: Any, now: Any, *, create: bool = True) -> AuditKey:
    """Open (or create) the audit key, attach it to ``db`` and seal the chain if new."""
    from bastion.server.audit.service import seal

    key = open_audit_key(getattr(settings, "audit_key", None), settings.data_dir, create=create)
    attach(db, key)
    with db.session() as session:
        seal(session, now)
    return key
