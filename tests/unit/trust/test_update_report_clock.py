"""The update report's TPM clock is attested by the enrolled AK, or not believed (ADR 0038).

The device certifies its identity key with its AK, the report's nonce as qualifying
data (TPM2_Certify); the TPMS_ATTEST's signed ``clockInfo.clock`` is the report's
``tpm_clock``. Negative table: a clock claimed without evidence, evidence by another
AK, for another key, for another nonce, a clock that is not the signed one, evidence
with no enrolled AK, a flipped bit in the evidence, half the evidence. Software TPM
(the protocol's other backend runs the same calls against swtpm in the contract suite).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bastion.device.update.report import ReportFields, build_report
from bastion.errors import FormatError, VerificationError
from bastion.formats.tpm2 import Attest
from bastion.formats.update_report import SignedReport, UpdateResult
from bastion.tpm.software import SoftwareTpm
from bastion.trust.update_report import verify_clock, verify_report

NONCE = b"\x11" * 32
OTHER = b"\x22" * 32
FIELDS = ReportFields("dev0001", "2.0", "b", 2, UpdateResult.COMMITTED)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tpm = SoftwareTpm(Path(tmp_path_factory.mktemp("tpm")) / "state.json")
    return {
        "tpm": tpm,
        "ak": tpm.create_ak(),
        "other_ak": tpm.create_ak(),
        "key": tpm.create_signing_key("ecc-p256"),
        "other_key": tpm.create_signing_key("ecc-p256"),
    }


def _check(keys: dict[str, Any], signed: bytes, ak: str | None = "ak") -> int | None:
    parsed = SignedReport.parse(signed)
    report = verify_report(parsed, keys["key"].public, device_id="dev0001", open_nonces=[NONCE])
    info = verify_clock(
        parsed,
        report,
        ak_public=None if ak is None else keys[ak].public,
        key_public=keys["key"].public,
    )
    return None if info is None else info.clock


def test_the_clock_is_the_one_the_ak_signed(keys: dict[str, Any]) -> None:
    signed = build_report(keys["tpm"], keys["key"], FIELDS, NONCE, ak=keys["ak"])
    parsed = SignedReport.parse(signed)
    report = parsed.fields()
    clock = Attest.parse(parsed.clock_attest).clock_info.clock
    assert report.tpm_clock == clock and _check(keys, signed) == clock


def test_no_clock_and_no_evidence_is_unknown(keys: dict[str, Any]) -> None:
    signed = build_report(keys["tpm"], keys["key"], FIELDS, NONCE)
    assert SignedReport.parse(signed).clock_attest == b""
    assert _check(keys, signed) is None


def _evidence(keys: dict[str, Any], ak: str, key: str, nonce: bytes) -> tuple[bytes, bytes]:
    got = keys["tpm"].certify(keys[ak], keys[key], nonce)
    return got.attest, got.signature


def _resigned(keys: dict[str, Any], tpm_clock: int, attest: bytes, sig: bytes) -> bytes:
    """A report the identity key really signs, with the given clock and evidence."""
    import hashlib

    from bastion.formats.update_report import UpdateReport

    report = UpdateReport(
        "dev0001", "2.0", "b", 2, UpdateResult.COMMITTED, "", NONCE, tpm_clock
    ).to_bytes()
    signature = keys["tpm"].sign(
        keys["key"], hashlib.sha256(SignedReport(report, b"").signed_message).digest()
    )
    return SignedReport(report, signature, attest, sig).to_bytes()


def _clock_of(attest: bytes) -> int:
    return Attest.parse(attest).clock_info.clock


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _good(k: dict[str, Any], ak: str = "ak", key: str = "key", nonce: bytes = NONCE,
          skew: int = 0) -> bytes:  # fmt: skip
    attest, sig = _evidence(k, ak, key, nonce)
    return _resigned(k, _clock_of(attest) + skew, attest, sig)


def _flipped(k: dict[str, Any]) -> bytes:
    attest, sig = _evidence(k, "ak", "key", NONCE)
    return _resigned(k, _clock_of(attest), _flip(attest, len(attest) - 3), sig)


Case = Callable[[dict[str, Any]], bytes]
#: case -> (the report, the AK the server enrolled, what the refusal says)
REFUSED: dict[str, tuple[Case, str | None, str]] = {
    "claimed without evidence": (
        lambda k: _resigned(k, 123456, b"", b""),
        "ak",
        "claimed without the AK's certify",
    ),
    "another AK certified it": (lambda k: _good(k, ak="other_ak"), "ak", "clock evidence"),
    "another key certified": (lambda k: _good(k, key="other_key"), "ak", "not the key's name"),
    "another nonce": (lambda k: _good(k, nonce=OTHER), "ak", "certify nonce"),
    "a clock that is not the signed one": (
        lambda k: _good(k, skew=1000),
        "ak",
        "the AK-signed clock is",
    ),
    "evidence but no enrolled AK": (_good, None, "enrolled no AK"),
    "a flipped bit in the evidence": (_flipped, "ak", "clock evidence"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused(keys: dict[str, Any], case: str) -> None:
    make, ak, says = REFUSED[case]
    with pytest.raises(VerificationError, match=says):
        _check(keys, make(keys), ak=ak)


def test_half_the_evidence_is_malformed(keys: dict[str, Any]) -> None:
    signed = build_report(keys["tpm"], keys["key"], FIELDS, NONCE, ak=keys["ak"])
    doc = json.loads(signed)
    del doc["clock_signature"]
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(FormatError, match="clock_attest with clock_signature"):
        SignedReport.parse(raw)
    doc["clock_signature"] = ""
    doc["clock_attest"] = ""
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(FormatError, match="empty"):
        SignedReport.parse(raw)
    with pytest.raises(FormatError, match="come together"):
        SignedReport(b"r", b"s", base64.b64decode(doc["signature"] or "AA=="), b"")
