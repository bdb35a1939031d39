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


DEVICE = pf.device_id(b"an EK TPM2B_PUBLIC")


def test_round_trip() -> None:
    prof = pf.make_profile("try-other-slot", ("verity", "rollback"), device=DEVICE, serial=3)
    assert pf.parse_profile(prof.to_bytes()) == prof
    assert (prof.device, prof.serial) == (DEVICE, 3)
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
        lambda d: d.update(device=""),
        lambda d: d.update(device=DEVICE.upper()),
        lambda d: d.update(device=DEVICE[:-2]),
        lambda d: d.pop("device"),
        lambda d: d.update(serial=0),
        lambda d: d.update(serial=65),
        lambda d: d.update(serial="2"),
        lambda d: d.update(serial=True),
        lambda d: d.pop("serial"),
    ],
)
def test_bad_profiles_refused(mutate: object) -> None:
    doc = pf.make_profile(device=DEVICE).to_json()
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
    prof = pf.make_profile(device=DEVICE)
    env = sign_envelope(pf.PAYLOAD_TYPE, prof.to_bytes(), [keys.platform_root])
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


def test_make_profile_refuses_serial_out_of_range() -> None:
    with pytest.raises(FormatError):
        pf.make_profile(serial=0)
    with pytest.raises(FormatError):
        pf.make_profile(serial=65)
