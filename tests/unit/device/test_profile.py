"""Security profile: defaults fail closed, strict parsing, signed envelope round trip."""

from __future__ import annotations

import json

import pytest
from tests.bootkit import product_keys

from bastion.device import profile as pf
from bastion.errors import FormatError, LimitError, SignatureError
from bastion.trust.envelope import parse_envelope, sign_envelope, verify_envelope
from bastion.trust.signer import Verifier


def test_defaults_enforce_and_halt() -> None:
    prof = pf.SecurityProfile()
    assert prof.tamper_response is pf.TamperResponse.HALT
    assert all(prof.mode(f) is pf.Mode.ENFORCE for f in pf.Feature)


def test_round_trip() -> None:
    prof = pf.make_profile("try-other-slot", ("verity", "rollback"))
    assert pf.parse_profile(prof.to_bytes()) == prof
    assert prof.mode(pf.Feature.VERITY) is pf.Mode.AUDIT
    assert prof.mode(pf.Feature.UNIT_SIGNATURE) is pf.Mode.ENFORCE


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(tamper_response="ignore"),
        lambda d: d["features"].update(verity="permissive"),
        lambda d: d["features"].update(unknown="audit"),
        lambda d: d.update(extra=1),
        lambda d: d.update(version=2),
        lambda d: d.pop("features"),
    ],
)
def test_bad_profiles_refused(mutate: object) -> None:
    doc = pf.SecurityProfile().to_json()
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(FormatError):
        pf.parse_profile(json.dumps(doc).encode())


def test_not_json_and_oversize_refused() -> None:
    with pytest.raises(FormatError):
        pf.parse_profile(b"{")
    with pytest.raises(LimitError):
        pf.parse_profile(b" " * (1 << 20))


def test_signed_by_platform_root_only() -> None:
    keys = product_keys()
    env = sign_envelope(pf.PAYLOAD_TYPE, pf.SecurityProfile().to_bytes(), [keys.platform_root])
    raw = env.to_bytes()
    root = Verifier.of(keys.platform_root.public_key())
    assert pf.parse_profile(
        verify_envelope(parse_envelope(raw), [root], payload_type=pf.PAYLOAD_TYPE)
    )
    with pytest.raises(SignatureError):
        verify_envelope(
            parse_envelope(raw),
            [Verifier.of(keys.boot.public_key())],
            payload_type=pf.PAYLOAD_TYPE,
        )
