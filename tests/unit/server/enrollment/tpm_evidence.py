"""Builds enrolment evidence from cryptography keys, byte-exact TPM 2.0 structures.

This is the *input* to the pure verifier (what a TPM would emit), not a TPM double:
the end-to-end tests use the software TPM and swtpm.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from bastion.device.tpm_csr import build_csr
from bastion.formats import enrollment as en
from bastion.formats.tpm2 import (
    Alg,
    Attest,
    CertifyInfo,
    ClockInfo,
    Curve,
    EccParms,
    EccPoint,
    ObjectAttr,
    Public,
    RsaParms,
    Scheme,
    Signature,
    SymDef,
)
from bastion.server.enrollment.evidence import EnrollmentEvidence

A = ObjectAttr
EK_ATTRS = 0x000300B2
AK_ATTRS = (
    A.FIXED_TPM
    | A.FIXED_PARENT
    | A.SENSITIVE_DATA_ORIGIN
    | A.USER_WITH_AUTH
    | A.RESTRICTED
    | A.SIGN_ENCRYPT
)
KEY_ATTRS = (
    A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.SIGN_ENCRYPT
)


def ecc_public(key: ec.EllipticCurvePrivateKey, attrs: int, scheme: Scheme | None = None) -> Public:
    nums = key.public_key().public_numbers()
    return Public(
        type=Alg.ECC,
        name_alg=Alg.SHA256,
        attributes=int(attrs),
        auth_policy=b"",
        parameters=EccParms(SymDef(), scheme or Scheme(Alg.ECDSA, Alg.SHA256), Curve.NIST_P256),
        unique=EccPoint(nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")),
    )


def rsa_ek_public(key: rsa.RSAPrivateKey, attrs: int = EK_ATTRS) -> Public:
    n = key.public_key().public_numbers().n
    return Public(
        type=Alg.RSA,
        name_alg=Alg.SHA256,
        attributes=attrs,
        auth_policy=bytes.fromhex(
            "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
        ),
        parameters=RsaParms(SymDef(Alg.AES, 128, Alg.CFB), Scheme(), 2048, 0),
        unique=n.to_bytes(256, "big"),
    )


def tpm_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return Signature(
        Alg.ECDSA, Alg.SHA256, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big")
    ).to_bytes()


@dataclasses.dataclass
class Device:
    """Keys of one simulated device and helpers to make its evidence."""

    ek: rsa.RSAPrivateKey
    ak: ec.EllipticCurvePrivateKey
    key: ec.EllipticCurvePrivateKey
    serial: str = "serial-0001"

    @classmethod
    def new(cls, ek: rsa.RSAPrivateKey, serial: str = "serial-0001") -> Device:
        return cls(
            ek,
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP256R1()),
            serial,
        )

    def csr(self, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        k = key or self.key
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.serial)])
        return build_csr(
            subject, k.public_key(), lambda d: k.sign(d, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        )

    def evidence(self, **overrides: Any) -> EnrollmentEvidence:
        ek_pub = overrides.pop("ek_public", rsa_ek_public(self.ek).to_bytes())
        ak_pub_obj = overrides.pop("ak_public_obj", ecc_public(self.ak, AK_ATTRS))
        key_pub_obj = overrides.pop("key_public_obj", ecc_public(self.key, KEY_ATTRS))
        csr_der = overrides.pop("csr_der", None) or self.csr()
        certified_name = overrides.pop("certified_name", key_pub_obj.name)
        qd = overrides.pop("qualifying", en.certify_qualifying_data(csr_der))
        attest = Attest(
            type=0x8017,
            qualified_signer=ak_pub_obj.name,
            extra_data=qd,
            clock_info=ClockInfo(1000, 1, 0, True),
            firmware_version=0x2019102300000000,
            attested=CertifyInfo(certified_name, certified_name),
        ).to_bytes()
        signer = overrides.pop("attest_signer", self.ak)
        sig = tpm_sign(signer, attest)
        values = {
            "serial": self.serial,
            "ek_public": ek_pub,
            "ak_public": ak_pub_obj.to_bytes(),
            "key_public": key_pub_obj.to_bytes(),
            "csr_der": csr_der,
            "certify_attest": attest,
            "certify_signature": sig,
        }
        values.update(overrides)
        return EnrollmentEvidence(**values)
