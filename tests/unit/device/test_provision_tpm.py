"""device/provision with a real TPM backend, against the pure server checks (no HTTP).

The device half (build_enrollment, activate_credential, key derivation) runs on each
TPM backend (`tpm_backend`: software TPM and swtpm via tpm2-pytss); the server half is
the pure code the server runs (verify_evidence, make_credential, seal/open).
"""

from __future__ import annotations

import base64
import dataclasses

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bastion.device.provision import build_enrollment
from bastion.errors import BastionError, DigestMismatchError, VerificationError
from bastion.formats import enrollment as en
from bastion.server.enrollment.evidence import EnrollmentEvidence, verify_evidence
from bastion.tpm.quote import make_credential


def _evidence(body: dict[str, str]) -> EnrollmentEvidence:
    csr = x509.load_pem_x509_csr(body["csr"].encode())
    return EnrollmentEvidence(
        serial=body["serial"],
        ek_public=base64.b64decode(body["ek_public"]),
        ak_public=base64.b64decode(body["ak_public"]),
        key_public=base64.b64decode(body["key_public"]),
        csr_der=csr.public_bytes(serialization.Encoding.DER),
        certify_attest=base64.b64decode(body["certify_attest"]),
        certify_signature=base64.b64decode(body["certify_signature"]),
    )


def test_device_evidence_verifies_and_credential_activates(tpm_backend) -> None:  # type: ignore[no-untyped-def]
    ak, _key, body = build_enrollment(tpm_backend, "serial-77")
    verified = verify_evidence(_evidence(body))
    assert verified.ak_name == ak.name
    secret = b"\x5a" * 32
    blob, encrypted = make_credential(base64.b64decode(body["ek_public"]), verified.ak_name, secret)
    assert tpm_backend.activate_credential(ak, blob, encrypted) == secret
    keys = en.derive_keys(secret, "ch_test")
    sealed = en.seal_api_key(keys, "dev", "bst_dev_x")
    assert (
        en.open_api_key(
            en.derive_keys(tpm_backend.activate_credential(ak, blob, encrypted), "ch_test"),
            "dev",
            sealed,
        )
        == "bst_dev_x"
    )


def test_csr_from_other_tpm_key_refused(tpm_backend) -> None:  # type: ignore[no-untyped-def]
    _, _, body = build_enrollment(tpm_backend, "serial-1")
    _, _, other = build_enrollment(tpm_backend, "serial-1")
    ev = _evidence(body)
    swapped = dataclasses.replace(ev, csr_der=_evidence(other).csr_der)
    with pytest.raises(VerificationError):
        verify_evidence(swapped)
    # the other key's public + CSR but this certify: the certified Name is not that key
    mixed = dataclasses.replace(
        ev, key_public=_evidence(other).key_public, csr_der=_evidence(other).csr_der
    )
    with pytest.raises(DigestMismatchError):
        verify_evidence(mixed)


def test_credential_for_other_ak_does_not_activate(tpm_backend) -> None:  # type: ignore[no-untyped-def]
    ak, _, body = build_enrollment(tpm_backend, "serial-2")
    ak2, _, body2 = build_enrollment(tpm_backend, "serial-2")
    verified2 = verify_evidence(_evidence(body2))
    blob, encrypted = make_credential(
        base64.b64decode(body["ek_public"]), verified2.ak_name, b"\x01" * 32
    )
    with pytest.raises(BastionError):
        tpm_backend.activate_credential(ak, blob, encrypted)
    assert tpm_backend.activate_credential(ak2, blob, encrypted) == b"\x01" * 32
