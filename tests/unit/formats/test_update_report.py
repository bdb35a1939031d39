"""The update report codec: canonical bytes, strict parsing, and the negative table."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError, LimitError
from bastion.formats.update_report import SignedReport, UpdateReport, UpdateResult

NONCE = bytes(range(32))
GOOD = UpdateReport(
    device="d" * 32,
    version="2.0.1",
    slot="b",
    svn=7,
    result=UpdateResult.FELL_BACK,
    reason="health check 'app' failed: exit 3",
    nonce=NONCE,
    tpm_clock=123456,
)


def _doc(**changes: object) -> bytes:
    doc = GOOD.to_json()
    doc.update(changes)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def test_round_trip_and_canonical_bytes() -> None:
    raw = GOOD.to_bytes()
    assert raw == json.dumps(GOOD.to_json(), sort_keys=True, separators=(",", ":")).encode()
    assert UpdateReport.parse(raw) == GOOD
    signed = SignedReport(raw, b"\x00\x18sig")
    assert SignedReport.parse(signed.to_bytes()) == signed
    assert signed.fields() == GOOD
    assert signed.signed_message.startswith(b"bastion-update-report/1\0")


NEGATIVE = {
    "not canonical (spaces)": (GOOD.to_bytes().replace(b",", b", "), FormatError),
    "not canonical (key order)": (
        json.dumps(GOOD.to_json(), separators=(",", ":")).encode(),
        FormatError,
    ),
    "unknown field": (_doc(extra=1), FormatError),
    "missing field": (
        json.dumps({k: v for k, v in GOOD.to_json().items() if k != "svn"}).encode(),
        FormatError,
    ),
    "wrong format": (_doc(format="bastion-update-report/2"), FormatError),
    "unknown result": (_doc(result="maybe"), FormatError),
    "svn negative": (_doc(svn=-1), FormatError),
    "svn too large": (_doc(svn=2**32), FormatError),
    "svn as bool": (_doc(svn=True), FormatError),
    "svn as string": (_doc(svn="7"), FormatError),
    "nonce short": (_doc(nonce="00" * 31), FormatError),
    "nonce uppercase": (_doc(nonce="AB" * 32), FormatError),
    "nonce odd length": (_doc(nonce="0" * 63), FormatError),
    "slot not a name": (_doc(slot="B/../a"), FormatError),
    "empty version": (_doc(version=""), FormatError),
    "version with control": (_doc(version="1\n2"), FormatError),
    "reason too long": (_doc(reason="x" * 1025), LimitError),
    "clock too large": (_doc(tpm_clock=2**63), FormatError),
    "device not an id": (_doc(device="a b"), FormatError),
    "nested": (_doc(reason={"a": 1}), FormatError),
    "duplicate key": (GOOD.to_bytes().replace(b'{"device"', b'{"svn":7,"device"'), FormatError),
    "oversize": (b'{"a":"' + b"x" * 5000 + b'"}', LimitError),
    "not json": (b"\xff", FormatError),
    "array": (b"[]", FormatError),
}


@pytest.mark.parametrize("raw,error", list(NEGATIVE.values()), ids=list(NEGATIVE))
def test_negative_reports(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        UpdateReport.parse(raw)


def _signed(**changes: str) -> bytes:
    doc = {
        "format": "bastion-signed-update-report/1",
        "report": base64.b64encode(GOOD.to_bytes()).decode(),
        "signature": base64.b64encode(b"sig").decode(),
    }
    doc.update(changes)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


SIGNED_NEGATIVE = {
    "wrong format": _signed(format="x"),
    "report not base64": _signed(report="!!!"),
    "signature not canonical base64": _signed(signature="c2lnZ"),
    "extra field": _signed(extra="1"),
    "spaces": _signed().replace(b",", b", "),
}


@pytest.mark.parametrize("raw", list(SIGNED_NEGATIVE.values()), ids=list(SIGNED_NEGATIVE))
def test_negative_signed(raw: bytes) -> None:
    with pytest.raises(FormatError):
        SignedReport.parse(raw)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_or_format_error(data: bytes) -> None:
    for parse in (UpdateReport.parse, SignedReport.parse):
        with contextlib.suppress(FormatError):  # anything else fails the test
            parse(data)


@given(
    st.text(alphabet="abcdef0123456789-_", min_size=1, max_size=64),
    st.text(min_size=1, max_size=128).filter(str.isprintable),
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(UpdateResult)),
    st.text(max_size=200),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**63 - 1),
)
def test_round_trip_is_identity(
    device: str, version: str, svn: int, result: UpdateResult, reason: str, nonce: bytes, clock: int
) -> None:
    report = UpdateReport(device, version, "a", svn, result, reason, nonce, clock)
    assert UpdateReport.parse(report.to_bytes()) == report
