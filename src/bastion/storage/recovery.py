"""Recovery keys for LUKS2 volumes, in systemd-cryptenroll's format.

A recovery key is 256 random bits written in systemd's "modhex" alphabet
(``cbdefghijklnrtuv``, the YubiKey modhex digits: easy to type on any keyboard layout),
64 characters in 8 dash-separated groups of 8: ``bhcrlvdk-...``. Exactly like
``systemd-cryptenroll --recovery-key``, the *whole string including the dashes* is the
keyslot passphrase, the keyslot uses systemd's minimal PBKDF (pbkdf2-sha512, 1000
iterations; the key has 256 bits of entropy) and a ``systemd-recovery`` token names the
keyslot, so ``cryptsetup open`` on a rescue machine accepts the typed key and
systemd-cryptenroll recognises the slot (``--wipe-slot=recovery``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from bastion.errors import FormatError
from bastion.formats.luks2 import Token
from bastion.storage.luks2_volume import MINIMAL_KDF, Luks2Volume

MODHEX = "cbdefghijklnrtuv"
RECOVERY_KEY_BYTES = 32
GROUP = 8
TOKEN_TYPE = "systemd-recovery"
_RE = re.compile(r"^[cbdefghijklnrtuv]{64}$")


def encode_recovery_key(raw: bytes) -> str:
    """Format 32 bytes as a recovery key (high nibble first, as systemd does)."""
    if len(raw) != RECOVERY_KEY_BYTES:
        raise FormatError(f"a recovery key encodes {RECOVERY_KEY_BYTES} bytes, got {len(raw)}")
    chars = "".join(MODHEX[b >> 4] + MODHEX[b & 0x0F] for b in raw)
    return "-".join(chars[i : i + GROUP] for i in range(0, len(chars), GROUP))


def generate_recovery_key() -> str:
    """A new random recovery key."""
    return encode_recovery_key(os.urandom(RECOVERY_KEY_BYTES))


def normalize_recovery_key(text: str) -> str:
    """Canonical form of a typed key: lower case, spaces removed, dashes re-inserted.

    FormatError names what is wrong (length or a character outside the alphabet).
    """
    compact = re.sub(r"[\s-]", "", text.strip().lower())
    if len(compact) != 2 * RECOVERY_KEY_BYTES:
        raise FormatError(
            f"recovery key has {len(compact)} characters, expected {2 * RECOVERY_KEY_BYTES}"
        )
    if not _RE.match(compact):
        bad = sorted({c for c in compact if c not in MODHEX})
        raise FormatError(f"recovery key contains {''.join(bad)!r}; allowed: {MODHEX}")
    return "-".join(compact[i : i + GROUP] for i in range(0, len(compact), GROUP))


def decode_recovery_key(text: str) -> bytes:
    """The 32 bytes behind a recovery key."""
    compact = normalize_recovery_key(text).replace("-", "")
    return bytes(
        MODHEX.index(compact[i]) << 4 | MODHEX.index(compact[i + 1])
        for i in range(0, len(compact), 2)
    )


@dataclass(frozen=True, slots=True)
class RecoveryEnrollment:
    """What ``enroll_recovery_key`` added; show ``key`` to the user once."""

    key: str
    keyslot: int
    token: int


def enroll_recovery_key(volume: Luks2Volume, *, key: str | None = None) -> RecoveryEnrollment:
    """Add a recovery-key keyslot and its ``systemd-recovery`` token to an unlocked volume."""
    text = normalize_recovery_key(key) if key is not None else generate_recovery_key()
    slot = volume.add_keyslot(text.encode("ascii"), kdf=MINIMAL_KDF)
    token = volume.add_token(Token(TOKEN_TYPE, (slot,), {}))
    return RecoveryEnrollment(text, slot, token)


def unlock_recovery_key(volume: Luks2Volume, text: str) -> int:
    """Unlock with a typed recovery key (any spacing or case); returns the keyslot."""
    return volume.unlock_passphrase(normalize_recovery_key(text).encode("ascii"))
