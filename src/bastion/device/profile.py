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
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from bastion.errors import FormatError, LimitError
from bastion.limits import PROFILE_MAX_SIZE

PAYLOAD_TYPE = "application/vnd.bastion.security-profile+json"


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

    def mode(self, feature: Feature) -> Mode:
        """The mode of ``feature`` (enforce unless the profile says audit)."""
        for name, mode in self.modes:
            if name == feature:
                return mode
        return Mode.ENFORCE

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "tamper_response": self.tamper_response.value,
            "features": {f.value: self.mode(f).value for f in Feature},
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()


def parse_profile(data: bytes) -> SecurityProfile:
    """Parse the profile JSON strictly (unknown keys or values are refused)."""
    if len(data) > PROFILE_MAX_SIZE:
        raise LimitError(f"security profile of {len(data)} bytes, limit {PROFILE_MAX_SIZE}")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"security profile is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"version", "tamper_response", "features"}:
        raise FormatError("security profile must have exactly version, tamper_response, features")
    if doc["version"] != 1:
        raise FormatError(f"security profile version {doc['version']!r}, expected 1")
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
    return SecurityProfile(response, modes)


def make_profile(tamper_response: str = "halt", audit: tuple[str, ...] = ()) -> SecurityProfile:
    """A profile from CLI-style arguments (ConfigError-free: FormatError names bad values)."""
    try:
        modes = tuple(sorted((Feature(f), Mode.AUDIT) for f in set(audit)))
        return SecurityProfile(TamperResponse(tamper_response), modes)
    except ValueError as exc:
        raise FormatError(f"security profile: {exc}") from exc
