"""Build, sign in the TPM, and send the device's update report (docs/adr/0031-rollouts.md).

The installer (device/update/*) calls :func:`build_report` once it knows the outcome of
an update (installed in trial, committed, fell back, failed):

    nonce = report_nonce(http, token)
    signed = build_report(tpm, identity.key, ReportFields(...), nonce)
    send_report(http, token, signed)

or :func:`report_update`, which does the three steps. ``token`` is the device's API key,
or None for a client that signs every request in the TPM (the agent's, ADR 0032).

The report is signed with the identity key the device enrolled with
(:attr:`bastion.device.provision.DeviceIdentity.key`: non-exportable, in the TPM,
certified by the AK at enrolment); the server believes
"installed" or "committed" only from such a report carrying a nonce it issued
(:mod:`bastion.trust.update_report`). The report bytes are canonical
(:mod:`bastion.formats.update_report`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from bastion import limits
from bastion.errors import FormatError
from bastion.formats.tpm2 import Attest
from bastion.formats.update_report import SignedReport, UpdateReport, UpdateResult
from bastion.io.http import HttpClient
from bastion.tpm.base import Tpm, TpmKey

NONCE_PATH = "/v1/device/update/report-nonce"
REPORT_PATH = "/v1/device/update/report"


@dataclass(frozen=True, slots=True)
class ReportFields:
    """What the device states (everything but the server's nonce)."""

    device: str
    version: str
    slot: str
    svn: int
    result: UpdateResult
    reason: str = ""
    tpm_clock: int = 0


def build_report(
    tpm: Tpm, key: TpmKey, fields: ReportFields, nonce: bytes, *, ak: TpmKey | None = None
) -> bytes:
    """The signed report (canonical bytes): ``key`` signs in ``tpm``.

    With ``ak`` (the enrolled attestation key) the TPM's clock is attested, not claimed
    (ADR 0038): TPM2_Certify of ``key`` by ``ak`` with ``nonce`` as qualifying data; its
    signed ``clockInfo.clock`` becomes ``tpm_clock`` (``fields.tpm_clock`` is ignored)
    and the certify travels with the report. One more TPM signature per report."""
    evidence = None
    tpm_clock = fields.tpm_clock
    if ak is not None:
        evidence = tpm.certify(ak, key, nonce)
        tpm_clock = Attest.parse(evidence.attest).clock_info.clock
    report = UpdateReport(
        device=fields.device,
        version=fields.version,
        slot=fields.slot,
        svn=fields.svn,
        result=fields.result,
        reason=fields.reason,
        nonce=nonce,
        tpm_clock=tpm_clock,
    ).to_bytes()
    unsigned = SignedReport(report, b"")
    signature = tpm.sign(key, hashlib.sha256(unsigned.signed_message).digest())
    if evidence is None:
        return SignedReport(report, signature).to_bytes()
    return SignedReport(report, signature, evidence.attest, evidence.signature).to_bytes()


def report_nonce(http: HttpClient, token: str | None) -> bytes:
    """A fresh single-use report nonce from the server."""
    answer = http.call_object("POST", NONCE_PATH, None, token=token)
    value = answer.get("nonce")
    if not isinstance(value, str):
        raise FormatError("report nonce answer: field 'nonce' missing")
    try:
        nonce = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"report nonce answer: nonce is not base64: {exc}") from exc
    if len(nonce) != limits.UPDATE_REPORT_NONCE_SIZE:
        raise FormatError(
            f"report nonce is {len(nonce)} bytes, expected {limits.UPDATE_REPORT_NONCE_SIZE}"
        )
    return nonce


def send_report(http: HttpClient, token: str | None, signed: bytes) -> dict[str, object]:
    """POST the signed report; the server's answer (what it recorded)."""
    body = {"report": base64.b64encode(signed).decode()}
    return http.call_object("POST", REPORT_PATH, body, token=token)


def report_update(
    tpm: Tpm,
    key: TpmKey,
    http: HttpClient,
    token: str | None,
    fields: ReportFields,
    *,
    ak: TpmKey | None = None,
) -> dict[str, object]:
    """Nonce, build and sign (the clock attested with ``ak``), send: the whole exchange."""
    nonce = report_nonce(http, token)
    return send_report(http, token, build_report(tpm, key, fields, nonce, ak=ak))
