"""The signed per-device security profile: tamper response and enforce/audit per feature.

Security is opt-out, never opt-in by accident: every feature defaults to ``enforce`` and
the tamper response to ``halt``. The profile is a JSON document inside a signed
envelope (payload type :data:`PAYLOAD_TYPE`) signed by the platform root key, whose hash
is fused into the device, so the ROM can check it before anything else runs. A profile
that does not verify is refused and the boot halts (fail closed).

* tamper response: ``halt`` (stop), ``try-other-slot`` (mark the slot unbootable and boot
  the other one), ``wipe-data`` (crypto-erase the data volume's LUKS2 header; the device
  must be re-provisioned);
* per feature: ``enforce`` (refuse) or ``audit`` (record the failure and continue, like
  SELinux permissive). Measurements still record the real bytes in audit mode, so
  attestation sees the difference and sealed keys stay sealed.

A profile is bound to one device and cannot be rolled back: ``device`` is the SHA-256 of
that device's TPM endorsement key (TPM2B_PUBLIC), so a profile signed for one device is
refused by every other; ``serial`` must not be lower than the highest serial the device
has accepted, which the ROM keeps in a TPM NV counter, so an older (say, more permissive)
profile signed earlier cannot be replayed.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from bastion.errors import FormatError, LimitError
from bastion.formats import strict_json
from bastion.limits import PROFILE_MAX_SERIAL, PROFILE_MAX_SIZE
from bastion.storage.kernel_verity import CorruptionResponse

PAYLOAD_TYPE = "application/vnd.bastion.security-profile+json"
#: device file holding the platform root's delegation of profile signing (trust/delegation)
DELEGATION_FILE = "profile-delegation.json"


class TamperResponse(enum.StrEnum):
    """What the chain does when a stage fails verification."""

    HALT = "halt"
    TRY_OTHER_SLOT = "try-other-slot"
    WIPE_DATA = "wipe-data"


class Mode(enum.StrEnum):
    """Enforce (refuse) or audit (record and continue)."""

    ENFORCE = "enforce"
    AUDIT = "audit"


class Feature(enum.StrEnum):
    """Checks whose failure the profile can switch to audit."""

    LOADER_SIGNATURE = "loader-signature"
    UNIT_SIGNATURE = "unit-signature"
    ROLLBACK = "rollback"
    MODULE_SIGNATURES = "module-signatures"
    VERITY_SIGNATURE = "verity-signature"
    VERITY = "verity"


@dataclass(frozen=True, slots=True)
class SecurityProfile:
    """One device's security profile."""

    tamper_response: TamperResponse = TamperResponse.HALT
    modes: tuple[tuple[Feature, Mode], ...] = field(default=())
    device: str = ""  # sha256 hex of the device's EK TPM2B_PUBLIC ("" = not yet bound)
    serial: int = 1  # monotonic: the ROM refuses a serial below the highest it accepted

    def mode(self, feature: Feature) -> Mode:
        """The mode of ``feature`` (enforce unless the profile says audit)."""
        for name, mode in self.modes:
            if name == feature:
                return mode
        return Mode.ENFORCE

    def verity_error_response(self) -> CorruptionResponse:
        """What the kernel's dm-verity does on a corrupted block (ADR 0028, decision 5):
        ``verity`` in audit mode ignores it (logged), ``halt`` and ``wipe-data`` panic
        (the kernel cannot erase keys at a failed read), ``try-other-slot`` restarts so
        the BLS boot counter of this entry runs out and systemd-boot falls back."""
        if self.mode(Feature.VERITY) is Mode.AUDIT:
            return CorruptionResponse.IGNORE
        if self.tamper_response is TamperResponse.TRY_OTHER_SLOT:
            return CorruptionResponse.RESTART
        return CorruptionResponse.PANIC

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "device": self.device,
            "serial": self.serial,
            "tamper_response": self.tamper_response.value,
            "features": {f.value: self.mode(f).value for f in Feature},
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()


def parse_profile(data: bytes) -> SecurityProfile:
    """Parse the profile JSON strictly (unknown keys or values are refused)."""
    if len(data) > PROFILE_MAX_SIZE:
        raise LimitError(f"security profile of {len(data)} bytes, limit {PROFILE_MAX_SIZE}")
    doc = strict_json.loads(data, what="security profile", max_size=PROFILE_MAX_SIZE)
    keys = {"version", "device", "serial", "tamper_response", "features"}
    if not isinstance(doc, dict) or set(doc) != keys:
        raise FormatError(f"security profile must have exactly {', '.join(sorted(keys))}")
    if doc["version"] != 1:
        raise FormatError(f"security profile version {doc['version']!r}, expected 1")
    device, serial = doc["device"], doc["serial"]
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise FormatError("security profile device must be 64 lower-case hex digits (EK SHA-256)")
    if type(serial) is not int or not 1 <= serial <= PROFILE_MAX_SERIAL:
        raise FormatError(f"security profile serial must be 1..{PROFILE_MAX_SERIAL}")
    try:
        response = TamperResponse(doc["tamper_response"])
        features = doc["features"]
        if not isinstance(features, dict):
            raise ValueError("features is not an object")
        modes = tuple(
            sorted((Feature(k), Mode(v)) for k, v in features.items() if v != Mode.ENFORCE)
        )
    except (ValueError, TypeError) as exc:
        raise FormatError(f"security profile: {exc}") from exc
    return SecurityProfile(response, modes, device, serial)


_DEVICE_RE = re.compile(r"[0-9a-f]{64}")


def device_id(ek_public: bytes) -> str:
    """The identity a profile is bound to: SHA-256 (hex) of the EK's TPM2B_PUBLIC bytes."""
    return hashlib.sha256(ek_public).hexdigest()


def make_profile(
    tamper_response: str = "halt", audit: tuple[str, ...] = (), *, device: str = "", serial: int = 1
) -> SecurityProfile:
    """A profile from CLI-style arguments (ConfigError-free: FormatError names bad values)."""
    if not 1 <= serial <= PROFILE_MAX_SERIAL:
        raise FormatError(f"security profile serial must be 1..{PROFILE_MAX_SERIAL}")
    try:
        modes = tuple(sorted((Feature(f), Mode.AUDIT) for f in set(audit)))
        return SecurityProfile(TamperResponse(tamper_response), modes, device, serial)
    except ValueError as exc:
        raise FormatError(f"security profile: {exc}") from exc
