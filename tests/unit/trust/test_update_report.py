"""Signed update reports: built and signed in a TPM, verified, and the negative table.

Every refusal the server relies on is here: wrong key, other device's report, stale
or replayed nonce (not among the open ones), any tampered field, a flipped signature
bit, a wrong signing prefix.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from bastion.device.update.report import ReportFields, build_report
from bastion.errors import FormatError, SignatureError, VerificationError
from bastion.formats.update_report import SignedReport, UpdateResult
from bastion.tpm.base import TpmKey
from bastion.tpm.software import SoftwareTpm
from bastion.trust.update_report import verify_report

NONCE = b"\x11" * 32
OTHER_NONCE = b"\x22" * 32
FIELDS = ReportFields(
    device="dev0001",
    version="2.0.1",
    slot="b",
    svn=7,
    result=UpdateResult.COMMITTED,
    reason="",
    tpm_clock=99,
)


@pytest.fixture(scope="module")
def tpms(tmp_path_factory: pytest.TempPathFactory) -> tuple[SoftwareTpm, TpmKey, TpmKey]:
    folder = tmp_path_factory.mktemp("tpm")
    tpm = SoftwareTpm(Path(folder) / "state.json")
    return tpm, tpm.create_signing_key("ecc-p256"), tpm.create_signing_key("ecc-p256")


def _with(signed: bytes, **changes: object) -> bytes:
    """The signed report with report fields changed (signature kept: tampering)."""
    outer = SignedReport.parse(signed)
    doc = json.loads(outer.report)
    doc.update(changes)
    inner = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return SignedReport(inner, outer.signature).to_bytes()


def test_a_good_report_verifies(tpms: tuple[SoftwareTpm, TpmKey, TpmKey]) -> None:
    tpm, key, _ = tpms
    signed = build_report(tpm, key, FIELDS, NONCE)
    report = verify_report(
        signed, key.public, device_id="dev0001", open_nonces=[OTHER_NONCE, NONCE]
    )
    assert (report.version, report.slot, report.svn, report.result) == (
        "2.0.1",
        "b",
        7,
        "committed",
    )
    assert report.nonce == NONCE and report.tpm_clock == 99


def test_rsa_identity_key_works(tpms: tuple[SoftwareTpm, TpmKey, TpmKey]) -> None:
    tpm = tpms[0]
    key = tpm.create_signing_key("rsa2048")
    signed = build_report(tpm, key, FIELDS, NONCE)
    assert verify_report(signed, key.public, device_id="dev0001", open_nonces=[NONCE]).svn == 7


def _flip_signature(signed: bytes) -> bytes:
    outer = SignedReport.parse(signed)
    sig = bytearray(outer.signature)
    sig[-1] ^= 1
    return SignedReport(outer.report, bytes(sig)).to_bytes()


def _unprefixed(tpm: SoftwareTpm, key: TpmKey) -> bytes:
    """Signed over the report without the domain-separation prefix."""
    good = SignedReport.parse(build_report(tpm, key, FIELDS, NONCE))
    sig = tpm.sign(key, hashlib.sha256(good.report).digest())
    return SignedReport(good.report, sig).to_bytes()


# name -> (make signed bytes, which key verifies, device id, open nonces, error)
CASES = {
    "wrong key (another device's key)": ("good", "other", "dev0001", [NONCE], SignatureError),
    "other device's report": ("other_device", "other", "dev0001", [NONCE], VerificationError),
    "stale nonce (expired, purged)": ("good", "key", "dev0001", [], VerificationError),
    "replayed nonce (consumed)": ("good", "key", "dev0001", [OTHER_NONCE], VerificationError),
    "tampered result": ("tamper_result", "key", "dev0001", [NONCE], SignatureError),
    "tampered svn": ("tamper_svn", "key", "dev0001", [NONCE], SignatureError),
    "tampered version": ("tamper_version", "key", "dev0001", [NONCE], SignatureError),
    "tampered reason": ("tamper_reason", "key", "dev0001", [NONCE], SignatureError),
    "tampered nonce": ("tamper_nonce", "key", "dev0001", [NONCE, OTHER_NONCE], SignatureError),
    "flipped signature bit": ("flip", "key", "dev0001", [NONCE], SignatureError),
    "no domain prefix": ("unprefixed", "key", "dev0001", [NONCE], SignatureError),
    "garbage signature": ("garbage_sig", "key", "dev0001", [NONCE], SignatureError),
    "not a signed report": ("garbage", "key", "dev0001", [NONCE], FormatError),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_negative_table(tpms: tuple[SoftwareTpm, TpmKey, TpmKey], case: tuple) -> None:  # type: ignore[type-arg]
    tpm, key, other = tpms
    make, which, device, nonces, error = case
    good = build_report(tpm, key, FIELDS, NONCE)
    made = {
        "good": lambda: good,
        "other_device": lambda: build_report(tpm, other, _other_fields(), NONCE),
        "tamper_result": lambda: _with(good, result="failed"),
        "tamper_svn": lambda: _with(good, svn=8),
        "tamper_version": lambda: _with(good, version="2.0.2"),
        "tamper_reason": lambda: _with(good, reason="fine"),
        "tamper_nonce": lambda: _with(good, nonce=OTHER_NONCE.hex()),
        "flip": lambda: _flip_signature(good),
        "unprefixed": lambda: _unprefixed(tpm, key),
        "garbage_sig": lambda: SignedReport(SignedReport.parse(good).report, b"\0\0").to_bytes(),
        "garbage": lambda: base64.b64encode(good),
    }[make]()
    public = key.public if which == "key" else other.public
    with pytest.raises(error) as info:
        verify_report(made, public, device_id=device, open_nonces=nonces)
    assert device in str(info.value) or error is FormatError


def _other_fields() -> ReportFields:
    return ReportFields("dev0002", "2.0.1", "b", 7, UpdateResult.COMMITTED, "", 99)
