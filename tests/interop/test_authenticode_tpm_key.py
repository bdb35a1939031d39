"""A UKI signed by keys that never leave a TPM (both backends): sbverify accepts it,
and a .pcrsig signed by a TPM RSA key verifies like systemd's TPM-side check."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.interop.test_authenticode_sbsign import need_stub, sbverify
from tests.pebuild import make_pe

from bastion.build.uki import UkiInputs, build_uki, with_pcr_signature
from bastion.formats.uki import uki_sections
from bastion.trust.authenticode import sign_pe, verify_pe
from bastion.trust.keys import create_tpm_key
from bastion.trust.pcr11 import pcr11_policy, predict_pcr11
from bastion.trust.pki import create_root_ca

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("alg", ["rsa-2048", "ecdsa-p256"])
def test_tpm_key_signs_uki(tpm_rig, tmp_path: Path, alg: str) -> None:  # type: ignore[no-untyped-def]
    signer = create_tpm_key(tpm_rig.tpm, alg, tmp_path / "db.tpmkey")
    cert = create_root_ca(signer, f"bastion tpm db {alg}")
    cert_path = tmp_path / "db.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    inputs = UkiInputs(linux=make_pe(), cmdline=b"quiet\0")
    if alg == "rsa-2048":
        inputs = with_pcr_signature(inputs, signer, ["enter-initrd"])
    signed = sign_pe(build_uki(need_stub(), inputs), signer, cert)
    path = tmp_path / "uki.efi"
    path.write_bytes(signed)
    assert sbverify(path, cert_path) == 0
    assert verify_pe(signed, [cert]).signer == cert
    if alg == "rsa-2048":
        sections = uki_sections(signed)
        entry = json.loads(sections[".pcrsig"])["sha256"][0]
        pol = pcr11_policy(predict_pcr11(sections, "enter-initrd"))
        assert entry["pol"] == pol.hex()
        key = signer.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        key.verify(base64.b64decode(entry["sig"]), pol, padding.PKCS1v15(), hashes.SHA256())
