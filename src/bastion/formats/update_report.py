"""The device's update report: what it installed and how that went, in canonical bytes.

A device tells the fleet server the outcome of an update with an :class:`UpdateReport`
(docs/updates.md "Rollouts and device reports", docs/adr/0031-rollouts.md):

=============  =======================================================================
field          meaning
=============  =======================================================================
``format``     ``bastion-update-report/1``
``device``     the reporting device's id (the server checks it is the caller)
``version``    the release the report is about: installed, or the one that was tried
``slot``       the slot the device runs now (``a``, ``b``, ...)
``svn``        the security version of the running slot
``result``     ``installed`` | ``committed`` | ``fell_back`` | ``failed``
``reason``     why (the failed health check, the install error); may be empty
``nonce``      the single-use nonce the server issued for this report (hex)
``tpm_clock``  the TPM clock (ms); 0 (unknown) unless attested (below)
=============  =======================================================================

The signed bytes are the report's *canonical* encoding: JSON with sorted keys, no
spaces, ASCII escapes (:meth:`UpdateReport.to_bytes`); :meth:`UpdateReport.parse`
refuses any other encoding of the same values, so one report has exactly one byte
form. :class:`SignedReport` carries those bytes (base64) and the device identity key's
TPMT_SIGNATURE over :data:`SIGNING_PREFIX` + bytes; it is also canonical JSON. It may
carry the clock's evidence too (ADR 0038): ``clock_attest`` and ``clock_signature``,
a TPM2_Certify of the identity key by the enrolled AK with the report's nonce as
qualifying data, whose TPMS_ATTEST ``clockInfo.clock`` is ``tpm_clock`` (both fields
or neither).
Verification is in :mod:`bastion.trust.update_report`, building and signing in the
TPM in :mod:`bastion.device.update.report`.

Pure: bytes in, frozen objects out, :class:`~bastion.errors.FormatError` (or its
:class:`~bastion.errors.LimitError` branch) on anything else.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from bastion.errors import FormatError, LimitError
from bastion.formats import strict_json
from bastion.limits import (
    RELEASE_VERSION_MAX_LENGTH,
    UPDATE_REPORT_MAX_SIZE,
    UPDATE_REPORT_NONCE_SIZE,
    UPDATE_REPORT_REASON_MAX,
)

REPORT_FORMAT = "bastion-update-report/1"
SIGNED_FORMAT = "bastion-signed-update-report/1"
#: domain separation: the identity key also signs CSRs, never anything with this prefix
SIGNING_PREFIX = b"bastion-update-report/1\0"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SLOT = re.compile(r"[a-z0-9_-]{1,16}")
_U32 = 2**32
_CLOCK_BOUND = 2**63  # TPMS_CLOCK_INFO.clock is a UINT64; stored signed


class UpdateResult(enum.StrEnum):
    """The outcome a report states."""

    INSTALLED = "installed"  # written to the inactive slot, booted in trial, not yet good
    COMMITTED = "committed"  # health checks passed, slot marked good, fuses at its SVN
    FELL_BACK = "fell_back"  # the new slot failed its trial; the device runs the old one
    FAILED = "failed"  # the install itself failed (download, verify, preflight)


_KEYS = frozenset(
    ("format", "device", "version", "slot", "svn", "result", "reason", "nonce", "tpm_clock")
)


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _int(doc: dict[str, Any], name: str, bound: int) -> int:
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
        raise FormatError(f"update report: {name} must be an integer 0..{bound - 1}, got {value!r}")
    return value


def _str(doc: dict[str, Any], name: str) -> str:
    value = doc[name]
    if not isinstance(value, str):
        raise FormatError(f"update report: {name} must be a string, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class UpdateReport:
    """One report's fields (see the module docstring)."""

    device: str
    version: str
    slot: str
    svn: int
    result: UpdateResult
    reason: str
    nonce: bytes
    tpm_clock: int = 0

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.device):
            raise FormatError(f"update report: device id {self.device[:80]!r} is not an id")
        if not self.version or len(self.version) > RELEASE_VERSION_MAX_LENGTH:
            raise FormatError(
                f"update report: version must be 1..{RELEASE_VERSION_MAX_LENGTH} characters"
            )
        if not self.version.isprintable():
            raise FormatError("update report: version holds control characters")
        if not _SLOT.fullmatch(self.slot):
            raise FormatError(f"update report: slot {self.slot[:40]!r} is not a slot name")
        if not 0 <= self.svn < _U32:
            raise FormatError(f"update report: svn {self.svn} is outside 0..2^32-1")
        if not 0 <= self.tpm_clock < _CLOCK_BOUND:
            raise FormatError(f"update report: tpm_clock {self.tpm_clock} is outside 0..2^63-1")
        if len(self.reason) > UPDATE_REPORT_REASON_MAX:
            raise LimitError(
                f"update report: reason is {len(self.reason)} characters, "
                f"limit is {UPDATE_REPORT_REASON_MAX}"
            )
        if len(self.nonce) != UPDATE_REPORT_NONCE_SIZE:
            raise FormatError(
                f"update report: nonce is {len(self.nonce)} bytes, "
                f"expected {UPDATE_REPORT_NONCE_SIZE}"
            )
        if not isinstance(self.result, UpdateResult):
            raise FormatError(f"update report: result {self.result!r} is not a result")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "device": self.device,
            "version": self.version,
            "slot": self.slot,
            "svn": self.svn,
            "result": self.result.value,
            "reason": self.reason,
            "nonce": self.nonce.hex(),
            "tpm_clock": self.tpm_clock,
        }

    def to_bytes(self) -> bytes:
        """The canonical encoding: the bytes a device signs."""
        return _canonical(self.to_json())

    @classmethod
    def parse(cls, data: bytes) -> UpdateReport:
        """Parse canonical report bytes; FormatError on anything else."""
        doc = strict_json.loads_object(
            data, what="update report", max_size=UPDATE_REPORT_MAX_SIZE, max_depth=1
        )
        if set(doc) != _KEYS:
            missing = sorted(_KEYS - set(doc))
            extra = sorted(set(doc) - _KEYS)
            raise FormatError(f"update report: missing fields {missing}, unknown fields {extra}")
        if doc["format"] != REPORT_FORMAT:
            raise FormatError(
                f"update report: format is {doc['format']!r}, expected {REPORT_FORMAT!r}"
            )
        nonce_hex = _str(doc, "nonce")
        if not re.fullmatch(f"[0-9a-f]{{{2 * UPDATE_REPORT_NONCE_SIZE}}}", nonce_hex):
            raise FormatError(
                f"update report: nonce must be {2 * UPDATE_REPORT_NONCE_SIZE} lowercase hex digits"
            )
        try:
            result = UpdateResult(_str(doc, "result"))
        except ValueError:
            raise FormatError(
                f"update report: result {doc['result']!r} is not one of "
                f"{', '.join(r.value for r in UpdateResult)}"
            ) from None
        report = cls(
            device=_str(doc, "device"),
            version=_str(doc, "version"),
            slot=_str(doc, "slot"),
            svn=_int(doc, "svn", _U32),
            result=result,
            reason=_str(doc, "reason"),
            nonce=bytes.fromhex(nonce_hex),
            tpm_clock=_int(doc, "tpm_clock", _CLOCK_BOUND),
        )
        if report.to_bytes() != bytes(data):
            raise FormatError("update report is not in canonical form (sorted keys, no spaces)")
        return report


def _b64(doc: dict[str, Any], name: str) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str):
        raise FormatError(f"signed update report: {name} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"signed update report: {name} is not base64: {exc}") from exc
    if base64.b64encode(raw).decode() != value:
        raise FormatError(f"signed update report: {name} is not canonical base64")
    return raw


@dataclass(frozen=True, slots=True)
class SignedReport:
    """Canonical report bytes and the TPMT_SIGNATURE over ``SIGNING_PREFIX + report``."""

    report: bytes
    signature: bytes
    #: TPMS_ATTEST of TPM2_Certify(AK, identity key, nonce) and the AK's TPMT_SIGNATURE
    clock_attest: bytes = b""
    clock_signature: bytes = b""

    def __post_init__(self) -> None:
        if bool(self.clock_attest) != bool(self.clock_signature):
            raise FormatError(
                "signed update report: clock_attest and clock_signature come together"
            )

    @property
    def signed_message(self) -> bytes:
        """The message the identity key signs (SHA-256 of it goes to TPM2_Sign)."""
        return SIGNING_PREFIX + self.report

    def to_bytes(self) -> bytes:
        doc = {
            "format": SIGNED_FORMAT,
            "report": base64.b64encode(self.report).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        if self.clock_attest:
            doc["clock_attest"] = base64.b64encode(self.clock_attest).decode()
            doc["clock_signature"] = base64.b64encode(self.clock_signature).decode()
        return _canonical(doc)

    @classmethod
    def parse(cls, data: bytes) -> SignedReport:
        """Parse a signed report; the inner report is parsed by :meth:`fields`."""
        doc = strict_json.loads_object(
            data, what="signed update report", max_size=UPDATE_REPORT_MAX_SIZE, max_depth=1
        )
        plain = {"format", "report", "signature"}
        if set(doc) not in (plain, plain | {"clock_attest", "clock_signature"}):
            raise FormatError(
                "signed update report: expected exactly the fields format, report, signature "
                "(and clock_attest with clock_signature)"
            )
        if doc["format"] != SIGNED_FORMAT:
            raise FormatError(
                f"signed update report: format is {doc['format']!r}, expected {SIGNED_FORMAT!r}"
            )
        clock = ("clock_attest", "clock_signature")
        attest, sig = (_b64(doc, n) for n in clock) if "clock_attest" in doc else (b"", b"")
        if "clock_attest" in doc and not (attest and sig):
            raise FormatError("signed update report: clock_attest and clock_signature are empty")
        signed = cls(_b64(doc, "report"), _b64(doc, "signature"), attest, sig)
        if signed.to_bytes() != bytes(data):
            raise FormatError("signed update report is not in canonical form")
        return signed

    def fields(self) -> UpdateReport:
        """The parsed report (not yet verified: see :mod:`bastion.trust.update_report`)."""
        return UpdateReport.parse(self.report)
