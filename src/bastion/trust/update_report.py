"""Verify a device's signed update report: the fleet server's source of truth.

:func:`verify_report` is bytes-in, raise-on-failure (CONVENTIONS 2 and 3). A report is
believed only when all of these hold, checked in this order:

1. it parses as a canonical :class:`~bastion.formats.update_report.SignedReport`
   (FormatError otherwise: a flipped byte in a field lands here or at 2);
2. its TPMT_SIGNATURE over ``SIGNING_PREFIX + report`` verifies with the identity key
   the device enrolled with (TPM2B_PUBLIC, certified by its AK at enrolment):
   :class:`~bastion.errors.SignatureError` names the device;
3. the report names the calling device (another device's report, even correctly
   signed by that other device, is refused);
4. its nonce is one the server issued to this device and has not consumed: the caller
   passes the open nonces; a stale (expired and purged), replayed (consumed) or
   invented nonce is :class:`~bastion.errors.VerificationError`.

The caller then consumes the matched nonce in the same transaction that stores the
report. Pure: no I/O, no clock.

:func:`verify_clock` decides whether the report's ``tpm_clock`` is believed (ADR 0038):
a report may carry a TPM2_Certify of the identity key by the device's enrolled AK,
with the report's nonce as qualifying data. It is believed only when that verifies
with the AK (signature, certify type, nonce, the certified key is the enrolled identity
key) and its signed ``clockInfo.clock`` is exactly ``tpm_clock``; a non-zero
``tpm_clock`` without it is a claim and refused. ``0`` means unknown.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from bastion.errors import FormatError, SignatureError, VerificationError
from bastion.formats.tpm2 import ClockInfo
from bastion.formats.update_report import SignedReport, UpdateReport
from bastion.tpm.quote import verify_certify, verify_signature


def verify_report(
    signed: bytes | SignedReport,
    key_public: bytes,
    *,
    device_id: str,
    open_nonces: Iterable[bytes],
) -> UpdateReport:
    """The verified report of ``device_id``; raises on the first failed check."""
    parsed = signed if isinstance(signed, SignedReport) else SignedReport.parse(signed)
    try:
        verify_signature(key_public, parsed.signed_message, parsed.signature)
    except SignatureError as exc:
        raise SignatureError(
            f"update report does not verify with the identity key device {device_id} "
            f"enrolled with: {exc}"
        ) from None
    except FormatError as exc:
        raise SignatureError(f"update report signature of device {device_id}: {exc}") from exc
    report = parsed.fields()
    if report.device != device_id:
        raise VerificationError(
            f"update report names device {report.device!r}, expected the caller {device_id!r}"
        )
    if not any(hmac.compare_digest(report.nonce, n) for n in open_nonces):
        raise VerificationError(
            f"update report nonce {report.nonce.hex()[:16]}... is not an open nonce of device "
            f"{device_id}: stale, already used, or never issued (ask for a fresh one)"
        )
    return report


def verify_clock(
    signed: SignedReport,
    report: UpdateReport,
    *,
    ak_public: bytes | None,
    key_public: bytes,
) -> ClockInfo | None:
    """The TPM's signed clock of a verified ``report``, or None when it states none
    (``tpm_clock`` 0, no evidence); raises VerificationError for anything else."""
    if not signed.clock_attest:
        if report.tpm_clock:
            raise VerificationError(
                f"update report of device {report.device}: tpm_clock {report.tpm_clock} is "
                "claimed without the AK's certify of it (send the evidence, or 0)"
            )
        return None
    if ak_public is None:
        raise VerificationError(
            f"update report of device {report.device} carries clock evidence, but the "
            "device enrolled no AK to check it with"
        )
    try:
        attest = verify_certify(
            signed.clock_attest, signed.clock_signature, ak_public, report.nonce, key_public
        )
    except (VerificationError, FormatError) as exc:
        raise VerificationError(
            f"update report clock evidence of device {report.device}: {exc}"
        ) from exc
    if attest.clock_info.clock != report.tpm_clock:
        raise VerificationError(
            f"update report of device {report.device}: tpm_clock {report.tpm_clock}, the "
            f"AK-signed clock is {attest.clock_info.clock}"
        )
    return attest.clock_info


__all__ = ["verify_clock", "verify_report"]
